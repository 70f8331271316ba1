//! Scenarios and the population they describe: who joins when, who leaves how, and how much
//! each peer can upload.

use crate::proto::rng::Rng;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Scenario {
    /// Every peer joins during the first 10 s, as the stream starts; nobody leaves.
    Static,
    /// Session lengths are exponential (mean `mean_session_s`); each departure is followed by
    /// an arrival, so the population stays steady. Half the departures are crashes (silent),
    /// half graceful, unless told otherwise.
    Churn,
    /// The stream has been live for a while (`FLASH_WARMUP_S`) with nobody watching; then the
    /// whole population arrives within 10 s and stays.
    Flash,
}

/// Seconds the channel runs before a flash crowd arrives.
pub const FLASH_WARMUP_S: f64 = 30.0;
/// Window in which the initial population (or the flash crowd) arrives.
pub const ARRIVAL_WINDOW_S: f64 = 10.0;

impl Scenario {
    pub fn parse(s: &str) -> Option<Scenario> {
        match s {
            "static" => Some(Scenario::Static),
            "churn" => Some(Scenario::Churn),
            "flash" => Some(Scenario::Flash),
            _ => None,
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Static => "static",
            Scenario::Churn => "churn",
            Scenario::Flash => "flash",
        }
    }
    /// When the initial arrivals start.
    pub fn arrivals_start_s(&self) -> f64 {
        match self {
            Scenario::Flash => FLASH_WARMUP_S,
            _ => 0.0,
        }
    }
}

/// Upload capacity classes as multiples of the stream rate, with their shares of peers.
/// The default (docs/INTERFACE.md): 40 % 0.5x, 30 % 1x, 20 % 2x, 10 % 4x (mean 1.3x).
pub const DEFAULT_UPLOAD_MIX: [(f64, f64); 4] = [(0.5, 0.4), (1.0, 0.3), (2.0, 0.2), (4.0, 0.1)];
/// The source's upload capacity, in stream rates.
pub const SOURCE_UPLOAD_FACTOR: f64 = 4.0;

/// Draws a peer's upload factor from the mix.
pub fn draw_upload(rng: &mut Rng, mix: &[(f64, f64)]) -> f64 {
    let total: f64 = mix.iter().map(|(_, p)| p).sum();
    let mut x = rng.unit() * total;
    for &(f, p) in mix {
        if x < p {
            return f;
        }
        x -= p;
    }
    mix.last().map_or(1.0, |m| m.0)
}

/// The upload factors of an initial population of `n`: the mix's shares in proportion
/// (peer `i` takes the factor at quantile (i + 0.5) / n), in a random order. A small swarm
/// then has the mix it was asked for, not a draw that may lack the fast class altogether.
pub fn stratified_uploads(rng: &mut Rng, mix: &[(f64, f64)], n: usize) -> Vec<f64> {
    let total: f64 = mix.iter().map(|(_, p)| p).sum();
    let mut v: Vec<f64> = (0..n)
        .map(|i| {
            let mut x = (i as f64 + 0.5) / n as f64 * total;
            for &(f, p) in mix {
                if x < p {
                    return f;
                }
                x -= p;
            }
            mix.last().map_or(1.0, |m| m.0)
        })
        .collect();
    rng.shuffle(&mut v);
    v
}

/// Mean upload factor of a mix.
pub fn mean_upload(mix: &[(f64, f64)]) -> f64 {
    let total: f64 = mix.iter().map(|(_, p)| p).sum();
    mix.iter().map(|(f, p)| f * p).sum::<f64>() / total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_mix_means_1_3() {
        assert!((mean_upload(&DEFAULT_UPLOAD_MIX) - 1.3).abs() < 1e-9);
        let mut rng = Rng::new(2);
        let n = 100_000;
        let m = (0..n)
            .map(|_| draw_upload(&mut rng, &DEFAULT_UPLOAD_MIX))
            .sum::<f64>()
            / n as f64;
        assert!((m - 1.3).abs() < 0.02, "{m}");
    }
}
