"""A small dependency-free SVG plotter: line charts (linear or log axes) and grouped bars."""
import math
from xml.sax.saxutils import escape

W, H = 640, 400
ML, MR, MT, MB = 70, 20, 40, 80
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#17becf"]


def _nice_step(span, n=5):
    raw = span / max(1, n)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _ticks(lo, hi, log):
    if log:
        out = []
        e = math.floor(math.log10(lo))
        while 10 ** e <= hi * 1.0001:
            for m in (1, 2, 5):
                v = m * 10 ** e
                if lo * 0.9999 <= v <= hi * 1.0001:
                    out.append(v)
            e += 1
        return out
    step = _nice_step(hi - lo)
    v = math.ceil(lo / step) * step
    out = []
    while v <= hi + step * 1e-6:
        out.append(round(v, 10))
        v += step
    return out


def _fmt(v):
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}".rstrip("0").rstrip(".")
    return f"{v:.3f}".rstrip("0").rstrip(".")


class _Axes:
    def __init__(self, xlo, xhi, ylo, yhi, xlog, ylog):
        self.xlo, self.xhi, self.ylo, self.yhi, self.xlog, self.ylog = xlo, xhi, ylo, yhi, xlog, ylog

    def _t(self, v, lo, hi, log):
        if log:
            v, lo, hi = math.log10(max(v, 1e-12)), math.log10(lo), math.log10(hi)
        return (v - lo) / (hi - lo) if hi > lo else 0.5

    def x(self, v):
        return ML + self._t(v, self.xlo, self.xhi, self.xlog) * (W - ML - MR)

    def y(self, v):
        return H - MB - self._t(v, self.ylo, self.yhi, self.ylog) * (H - MT - MB)


def _frame(ax, title, xlabel, ylabel, xticks, yticks, xticklabels=None):
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
         f'font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="14" font-weight="bold">{escape(title)}</text>']
    for v in yticks:
        y = ax.y(v)
        s.append(f'<line x1="{ML}" y1="{y:.1f}" x2="{W - MR}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        s.append(f'<text x="{ML - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(v)}</text>')
    for i, v in enumerate(xticks):
        x = ax.x(v)
        lab = xticklabels[i] if xticklabels else _fmt(v)
        s.append(f'<line x1="{x:.1f}" y1="{MT}" x2="{x:.1f}" y2="{H - MB}" stroke="#f0f0f0"/>')
        s.append(f'<text x="{x:.1f}" y="{H - MB + 16}" text-anchor="middle">{escape(lab)}</text>')
    s.append(f'<rect x="{ML}" y="{MT}" width="{W - ML - MR}" height="{H - MT - MB}" fill="none" stroke="#333"/>')
    s.append(f'<text x="{(ML + W - MR) / 2}" y="{H - MB + 36}" text-anchor="middle">{escape(xlabel)}</text>')
    s.append(f'<text x="16" y="{(MT + H - MB) / 2}" text-anchor="middle" '
             f'transform="rotate(-90 16 {(MT + H - MB) / 2})">{escape(ylabel)}</text>')
    return s


def _legend(s, labels, styles):
    x, y = ML, H - 22
    for lab, (color, dash, marker) in zip(labels, styles):
        s.append(f'<line x1="{x}" y1="{y}" x2="{x + 22}" y2="{y}" stroke="{color}" stroke-width="2" '
                 f'{f"stroke-dasharray={chr(34)}{dash}{chr(34)}" if dash else ""}/>')
        if marker:
            s.append(f'<rect x="{x + 8}" y="{y - 3}" width="6" height="6" fill="{color}"/>')
        s.append(f'<text x="{x + 27}" y="{y + 4}">{escape(lab)}</text>')
        x += 40 + 7.2 * len(lab)
        if x > W - 120:
            x, y = ML, y + 14


def line_chart(path, title, xlabel, ylabel, series, xlog=False, ylog=False, hlines=(), vlines=(),
               ylim=None, xlim=None, note=None):
    """series: [(label, xs, ys)]; hlines/vlines: [(value, label)]."""
    xs = [x for _, sx, _ in series for x in sx] + [v for v, _ in vlines]
    ys = [y for _, _, sy in series for y in sy] + [v for v, _ in hlines]
    xs = [x for x in xs if x is not None and (not xlog or x > 0)]
    ys = [y for y in ys if y is not None and (not ylog or y > 0)]
    if not xs or not ys:
        raise ValueError(f"{path}: nothing to plot")
    xlo, xhi = xlim or (min(xs), max(xs))
    ylo, yhi = ylim or (min(ys), max(ys))
    if not ylim and not ylog:
        pad = (yhi - ylo) * 0.05 or abs(yhi) * 0.1 or 1
        ylo, yhi = ylo - pad, yhi + pad
    if xhi == xlo:
        xlo, xhi = xlo - 1, xhi + 1
    if ylog:
        ylo, yhi = 10 ** math.floor(math.log10(ylo)), 10 ** math.ceil(math.log10(yhi))
    if xlog:
        xlo, xhi = 10 ** math.floor(math.log10(xlo) + 1e-9), max(xhi, xlo * 10)
    ax = _Axes(xlo, xhi, ylo, yhi, xlog, ylog)
    s = _frame(ax, title, xlabel, ylabel, _ticks(xlo, xhi, xlog), _ticks(ylo, yhi, ylog))
    labels, styles = [], []
    for v, lab in hlines:
        y = ax.y(v)
        s.append(f'<line x1="{ML}" y1="{y:.1f}" x2="{W - MR}" y2="{y:.1f}" stroke="#555" stroke-dasharray="6 4"/>')
        s.append(f'<text x="{W - MR - 4}" y="{y - 4:.1f}" text-anchor="end" fill="#555">{escape(lab)}</text>')
    for v, lab in vlines:
        x = ax.x(v)
        s.append(f'<line x1="{x:.1f}" y1="{MT}" x2="{x:.1f}" y2="{H - MB}" stroke="#555" stroke-dasharray="6 4"/>')
        s.append(f'<text x="{x + 4:.1f}" y="{MT + 14}" fill="#555">{escape(lab)}</text>')
    for i, (lab, sx, sy) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        pts = [(ax.x(x), ax.y(y)) for x, y in zip(sx, sy) if x is not None and y is not None]
        s.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="'
                 + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + '"/>')
        if len(pts) <= 30:
            for x, y in pts:
                s.append(f'<rect x="{x - 3:.1f}" y="{y - 3:.1f}" width="6" height="6" fill="{color}"/>')
        labels.append(lab)
        styles.append((color, None, len(pts) <= 30))
    _legend(s, labels, styles)
    if note:
        s.append(f'<text x="{W - MR}" y="{H - 6}" text-anchor="end" font-size="10" fill="#666">{escape(note)}</text>')
    s.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(s) + "\n")


def bar_chart(path, title, ylabel, categories, series, hlines=(), note=None, ylog=False):
    """series: [(label, values per category)]."""
    vals = [v for _, vs in series for v in vs if v is not None] + [v for v, _ in hlines]
    ylo = 0.0
    yhi = max(vals) * 1.1 if vals else 1.0
    if ylog:
        pos = [v for v in vals if v > 0]
        ylo, yhi = 10 ** math.floor(math.log10(min(pos))), 10 ** math.ceil(math.log10(max(pos)))
    ax = _Axes(0, len(categories), ylo, yhi, False, ylog)
    s = _frame(ax, title, "", ylabel, [], _ticks(ylo, yhi, ylog))
    gw = (W - ML - MR) / max(1, len(categories))
    bw = gw * 0.8 / max(1, len(series))
    for ci, cat in enumerate(categories):
        x0 = ML + ci * gw + gw * 0.1
        s.append(f'<text x="{ML + (ci + 0.5) * gw:.1f}" y="{H - MB + 16}" text-anchor="middle">{escape(cat)}</text>')
        for si, (_, vs) in enumerate(series):
            v = vs[ci]
            if v is None:
                continue
            y = ax.y(max(v, ylo if not ylog else ylo))
            base = ax.y(ylo)
            s.append(f'<rect x="{x0 + si * bw:.1f}" y="{y:.1f}" width="{bw * 0.95:.1f}" height="{base - y:.1f}" '
                     f'fill="{COLORS[si % len(COLORS)]}"/>')
    for v, lab in hlines:
        y = ax.y(v)
        s.append(f'<line x1="{ML}" y1="{y:.1f}" x2="{W - MR}" y2="{y:.1f}" stroke="#555" stroke-dasharray="6 4"/>')
        s.append(f'<text x="{W - MR - 4}" y="{y - 4:.1f}" text-anchor="end" fill="#555">{escape(lab)}</text>')
    _legend(s, [lab for lab, _ in series], [(COLORS[i % len(COLORS)], None, True) for i in range(len(series))])
    if note:
        s.append(f'<text x="{W - MR}" y="{H - 6}" text-anchor="end" font-size="10" fill="#666">{escape(note)}</text>')
    s.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(s) + "\n")
