//! The node's side of reachability (see `proto::reach`): asking for and carrying out
//! dial-backs, asking for and making introductions, starting punches, and handing out
//! membership records by reachability. Kept apart from the data plane in `node.rs`; the
//! state and its bounds live in `proto::reach`.

use super::{Link, Node, PendingDial, Purpose};
use crate::proto::reach::{dialable, hand_out_rank, punch_delays, ReachVia, INTRO_REQUEST_FANOUT};
use crate::proto::time::Duration;
use crate::proto::wire::{ByeReason, Control, MemberEntry, Payload, PeerAddr, PeerId, Reach, Role};
use crate::proto::{LinkId, Output};

/// Ranks of [`hand_out_rank`], best first.
const RANKS: u8 = 4;

impl<P: Payload> Node<P> {
    /// Up to `n` live records passing `keep`, those that can be dialled first (a redirect, a
    /// deputy's answer, a rejection's sample): a newcomer dials what it is handed.
    pub(super) fn hand_out(
        &mut self,
        n: usize,
        mut keep: impl FnMut(&MemberEntry) -> bool,
    ) -> Vec<MemberEntry> {
        let now = self.now;
        let mut v: Vec<MemberEntry> = Vec::with_capacity(n);
        for rank in 0..RANKS {
            if v.len() >= n {
                break;
            }
            let more = self.mcache.sample(&mut self.rng, n - v.len(), now, |e| {
                hand_out_rank(e) == rank && keep(e)
            });
            v.extend(more);
        }
        v
    }

    /// The address we would dial `e` at, if we may dial it (see [`dialable`]): we dial
    /// members' IPv6 addresses whenever we have one, open to dials or not.
    pub(super) fn dial_addr(&self, e: &MemberEntry) -> Option<PeerAddr> {
        dialable(e, self.reach.v6().is_some(), self.reach.router_ip())
    }

    /// A dial-back request on link `i`: answer with the address the link comes from and,
    /// within budget, dial that IP back at `port`.
    pub(super) fn on_dial_back_request(&mut self, i: usize, nonce: u64, port: u16) {
        let now = self.now;
        let link = self.links[i].id;
        let observed = self.links[i].remote;
        let remote = observed.with_port(port);
        let dialing = self.cfg.dial_back
            && !self.bans.addr_banned(remote, now)
            && self.introducer.may_dial_back(now, link);
        if dialing {
            self.reach.stats.dial_backs_done += 1;
            if let Some(p) = self.links[i].peer {
                self.introducer.dialled(now, nonce, p.id);
            }
            self.out.push_back(Output::DialBack { remote, nonce });
        } else {
            self.reach.stats.dial_backs_refused += 1;
        }
        self.send(i, Control::DialBackAnswer { observed, dialing });
    }

    /// A partner on link `i` asks us to dial its IPv6 address `addr` back: the link's own IP
    /// when the link is IPv6 (at `addr`'s port), else `addr`, if we have IPv6 ourselves.
    pub(super) fn on_dial_back_request6(&mut self, i: usize, nonce: u64, addr: PeerAddr) {
        let now = self.now;
        let link = self.links[i].id;
        let observed = self.links[i].remote;
        let remote = match observed {
            PeerAddr::V6(..) => observed.with_port(addr.port()),
            PeerAddr::V4(..) => addr,
        };
        let dialing = self.cfg.dial_back
            && self.links[i].partner.is_some()
            && self.reach.v6().is_some()
            && !self.bans.addr_banned(remote, now)
            && self.introducer.may_dial_back(now, link);
        if dialing {
            self.reach.stats.dial_backs_done += 1;
            self.out.push_back(Output::DialBack { remote, nonce });
        } else {
            self.reach.stats.dial_backs_refused += 1;
        }
        self.send(i, Control::DialBackAnswer { observed, dialing });
    }

    /// A partner asks for an introduction: pair it with another that asked, if one waits.
    pub(super) fn on_intro_request(&mut self, i: usize) {
        let l = &self.links[i];
        let (Some(peer), true) = (l.peer, l.partner.is_some()) else {
            return;
        };
        if peer.role != Role::Peer {
            return;
        }
        let Some(other) = self
            .introducer
            .on_request(self.now, l.id, peer.id, l.remote)
        else {
            return;
        };
        let Some(j) = self.link_index(other) else {
            return;
        };
        let (Some(peer_j), true) = (self.links[j].peer, self.links[j].partner.is_some()) else {
            return;
        };
        let (d_i, d_j) = punch_delays(self.links[i].one_way, self.links[j].one_way);
        self.reach.stats.introductions_made += 1;
        self.send(
            i,
            Control::Introduce {
                id: peer_j.id,
                addr: peer_j.listen,
                delay_ms: d_i,
            },
        );
        self.send(
            j,
            Control::Introduce {
                id: peer.id,
                addr: peer.listen,
                delay_ms: d_j,
            },
        );
    }

    /// A partner introduces peer `id` at `addr`: punch toward it at the agreed moment, if we
    /// want partners, are not linked to it, and the budgets allow.
    pub(super) fn on_introduce(&mut self, i: usize, id: PeerId, addr: PeerAddr, delay_ms: u16) {
        let now = self.now;
        if !self.cfg.hole_punch
            || self.links[i].partner.is_none()
            || id == self.id
            || self.reach.status().reachable == Some(true)
            || self.partner_count() >= self.partner_goal()
            || self.linked_to(id, addr)
            || self.reach.router_ip().is_some_and(|r| r.same_ip(&addr))
            || self.bans.id_banned(id, now)
            || self.bans.addr_banned(addr, now)
            || self.pending_dials.len() >= self.cfg.max_pending_dials
            || self.links.len() + self.pending_dials.len() >= self.cfg.max_links
            || !self.introducer.may_take(now)
        {
            return;
        }
        let at = now + Duration::from_millis(delay_ms as u64);
        self.reach.stats.introductions_taken += 1;
        self.reach.stats.punches += 1;
        self.pending_dials.push(PendingDial {
            addr,
            purpose: Purpose::Punch { ask: self.id < id },
            at,
        });
        self.out.push_back(Output::Punch { remote: addr, at });
    }

    /// A punched link is up: the side with the smaller id asks for the partnership.
    pub(super) fn on_punched(&mut self, i: usize, ask: bool) {
        self.reach.stats.punches_linked += 1;
        if ask {
            let req = self.partner_request();
            self.send(i, req);
            self.links[i].awaiting = super::awaiting::PARTNER;
        }
    }

    /// A link is going: what reachability work waited on it.
    pub(super) fn reach_link_gone(&mut self, link: LinkId) {
        self.reach.on_link_down(self.now, link);
        self.introducer.on_link_down(link);
    }

    /// Every tick: a dial-back timed out, one to ask for, introductions to ask for.
    pub(super) fn reach_tick(&mut self) {
        let now = self.now;
        // A dial-back timing out settles our reach: a record that can now be dialled (by
        // IPv6) is announced.
        let before = self.dialled_by();
        self.reach.tick(now);
        self.announce_if_changed(before);
        for rec in self.introducer.unreported(now) {
            self.mcache.learn(rec, now);
        }
        if !self.joined {
            return;
        }
        if self.reach.wants_dial_back(now) {
            // A partner, a peer rather than the source when there is one (the source answers
            // every newcomer's join already), on an IPv4 link when there is one: the
            // dial-back goes to the IP the link comes from, and our record's address is the
            // IPv4 one unless we have no IPv4 at all.
            let v4 = |l: &Link| matches!(l.remote, PeerAddr::V4(..));
            let peer = |l: &Link| l.peer.is_some_and(|p| p.role == Role::Peer);
            let any_v4 = self.links.iter().any(|l| l.partner.is_some() && v4(l));
            let fam = |l: &Link| v4(l) || !any_v4;
            let pick = self
                .pick_partner(|l| fam(l) && peer(l))
                .or_else(|| self.pick_partner(fam));
            if let Some(j) = pick {
                self.ask_dial_back(j);
            }
        }
        if self.cfg.dial_back && self.reach.wants_dial_back6(now) {
            // A partner on another link than a pending IPv4 dial-back's; one linked over
            // IPv6 first (it has IPv6 to dial us from).
            let busy = self.reach.pending_link();
            let free = |l: &Link| Some(l.id) != busy;
            let pick = self
                .pick_partner(|l| free(l) && matches!(l.remote, PeerAddr::V6(..)))
                .or_else(|| self.pick_partner(free));
            if let (Some(j), Some(addr)) = (pick, self.reach.v6()) {
                let nonce = self.rng.next_u64();
                self.reach.ask6(now, self.links[j].id, nonce);
                self.send(j, Control::DialBackRequestV6 { nonce, addr });
            }
        }
        let partners = self.partner_count();
        if self.cfg.role == Role::Peer
            && self.cfg.hole_punch
            && self
                .reach
                .wants_introductions(now, partners, self.partner_goal())
        {
            let mut asked: Vec<usize> = (0..self.links.len())
                .filter(|&j| self.links[j].partner.is_some())
                .collect();
            self.rng.shuffle(&mut asked);
            asked.truncate(INTRO_REQUEST_FANOUT);
            for j in asked {
                self.send(j, Control::IntroRequest);
            }
        }
    }

    /// Partners we look for. A node nobody can dial gets no partners but those it finds: it
    /// looks for as many as it would accept (a dialable node's inbound partners bring it
    /// there), or it would hold fewer suppliers than its neighbours.
    pub(super) fn partner_goal(&self) -> usize {
        let target = self.cfg.partner_target();
        if self.reach.reach() == Reach::Unreachable && self.reach.advertised_v6().is_none() {
            target.max(self.cfg.accept_limit())
        } else {
            target
        }
    }

    /// Whether gossip carries our own record: not while a dial-back is still to tell whether
    /// we can be dialled (a record of unknown reach costs whoever dials it a connect timeout
    /// if we cannot).
    pub(super) fn advertises_itself(&self) -> bool {
        !self.cfg.dial_back || self.reach.reach() != Reach::Unknown
    }

    /// Asks link `i` for a dial-back if we want one (the driver carries them out, nothing
    /// settled our reachability, none is pending).
    pub(super) fn ask_dial_back(&mut self, i: usize) {
        if !self.cfg.dial_back || !self.reach.wants_dial_back(self.now) {
            return;
        }
        let nonce = self.rng.next_u64();
        let link = self.links[i].id;
        self.reach.ask(self.now, link, nonce);
        let port = self.reach.advertised_port(self.cfg.listen_port);
        self.send(i, Control::DialBackRequest { nonce, port });
    }

    /// The driver tells how a dial-back of ours went: the asker's record says so.
    pub(super) fn on_dial_back_done(&mut self, nonce: u64, connected: bool) {
        if let Some((id, held)) = self.introducer.dial_back_done(nonce) {
            let reach = if connected {
                Reach::Reachable
            } else {
                Reach::Unreachable
            };
            match held {
                Some(mut rec) => {
                    rec.reach = reach;
                    self.mcache.learn(rec, self.now);
                }
                None => self.mcache.set_reach(id, reach),
            }
        }
    }

    /// What others dial us by, as our record says it.
    fn dialled_by(&self) -> (Reach, u16, Option<PeerAddr>) {
        (
            self.reach.reach(),
            self.reach.advertised_port(self.cfg.listen_port),
            self.reach.advertised_v6(),
        )
    }

    /// The driver's word on our reachability (`Input::Reachability`).
    pub(super) fn on_reachability(
        &mut self,
        reachable: Option<bool>,
        external: Option<PeerAddr>,
        v6: Option<PeerAddr>,
        via: ReachVia,
    ) {
        let before = self.dialled_by();
        self.reach.on_driver(reachable, external, v6, via);
        self.announce_if_changed(before);
    }

    /// A dial-back proof arrived (`Input::DialBackProof`).
    pub(super) fn on_dial_back_proof(&mut self, nonce: u64) {
        let before = self.dialled_by();
        self.reach.on_proof(nonce);
        self.announce_if_changed(before);
    }

    /// What others dial us by changed (`before`) to something dialable: every partner gets
    /// our record now, under a new sequence number, not at the next gossip round. The origin
    /// holds the record our join gave it (the listen port, reach unknown) until its dial-back
    /// is done; a router that forwards another port than we listen on, or a dial-back that
    /// landed on a neighbour the router forwards that port to, would leave it wrong until
    /// then.
    fn announce_if_changed(&mut self, before: (Reach, u16, Option<PeerAddr>)) {
        let after = self.dialled_by();
        if after == before
            || !self.advertises_itself()
            || (after.0 != Reach::Reachable && after.2.is_none())
        {
            return;
        }
        self.announce_self();
    }

    /// Sends our record to every partner under a new sequence number.
    fn announce_self(&mut self) {
        self.member_seq = self.member_seq.wrapping_add(1);
        let rec = self.own_record();
        for j in 0..self.links.len() {
            if self.links[j].partner.is_some() {
                self.send(j, Control::Members(vec![rec]));
            }
        }
    }

    /// Whether our record can be dialled as it stands (then a join says so at once).
    pub(super) fn dialable_now(&self) -> bool {
        self.advertises_itself()
            && (self.reach.reach() == Reach::Reachable || self.reach.advertised_v6().is_some())
    }

    /// The origin learns a joiner's record, once the dial-back it asked for (if it asked us)
    /// tells whether it can be dialled: a record of unknown reach handed to a newcomer costs
    /// it a connect timeout when the member is behind a NAT.
    pub(super) fn learn_joiner(&mut self, rec: MemberEntry) {
        if rec.reach != Reach::Unknown {
            self.mcache.learn(rec, self.now);
        } else if let Err(rec) = self.introducer.hold(rec) {
            self.mcache.learn(rec, self.now);
        }
    }

    /// A random partner link passing `keep`.
    fn pick_partner(&mut self, keep: impl Fn(&Link) -> bool) -> Option<usize> {
        let n = self
            .links
            .iter()
            .filter(|l| l.partner.is_some() && keep(l))
            .count();
        if n == 0 {
            return None;
        }
        let k = self.rng.below(n);
        self.links
            .iter()
            .enumerate()
            .filter(|(_, l)| l.partner.is_some() && keep(l))
            .nth(k)
            .map(|(j, _)| j)
    }

    /// A dial-back proof arrived on a link instead of on a connection of its own: a protocol
    /// error.
    pub(super) fn on_misplaced_proof(&mut self, i: usize) {
        self.close(i, ByeReason::Protocol);
    }
}

#[cfg(test)]
mod tests {
    use crate::proto::reach::ReachVia;
    use crate::proto::wire::{
        Control, Hello, MemberEntry, Message, PeerAddr, PeerId, Reach, Role, SimPayload, MAGIC,
        VERSION,
    };
    use crate::proto::{ChannelId, Command, Config, Input, Instant, LinkId, Node, Output};

    fn node() -> Node<SimPayload> {
        let mut cfg = Config::new(ChannelId([1; 32]), Role::Peer, 96_000);
        cfg.listen_port = 7000;
        cfg.dial_back = true;
        cfg.hole_punch = true;
        Node::new(cfg, PeerId(1), 3, Instant::ZERO)
    }

    /// An inbound link from `ip` that has said hello (and asked to partner, if `partner`).
    fn link(n: &mut Node<SimPayload>, k: u64, ip: [u8; 4], partner: bool) {
        let link = LinkId(k);
        let remote = PeerAddr::V4(ip, 40_000);
        n.handle_input(
            Instant::ZERO,
            Input::LinkUp {
                link,
                remote,
                outbound: false,
            },
        );
        let hello = Control::Hello(Hello {
            magic: MAGIC,
            version: VERSION,
            channel: ChannelId([1; 32]),
            peer_id: PeerId(100 + k),
            listen_port: 7000,
            role: Role::Peer,
            upload_kbps: 768,
        });
        let mut msgs = vec![hello];
        if partner {
            msgs.push(Control::PartnerRequest { partners: 1 });
        }
        for c in msgs {
            let msg = Message::Ctl(c);
            n.handle_input(Instant::ZERO, Input::Received { link, msg });
        }
        while n.poll_output().is_some() {}
    }

    fn outputs(n: &mut Node<SimPayload>) -> Vec<Output<SimPayload>> {
        std::iter::from_fn(|| n.poll_output()).collect()
    }

    #[test]
    fn a_dial_back_goes_only_to_the_ip_the_request_came_from_and_once_per_link() {
        let mut n = node();
        link(&mut n, 1, [198, 51, 100, 9], false);
        let ask = |n: &mut Node<SimPayload>, nonce| {
            let msg = Message::Ctl(Control::DialBackRequest { nonce, port: 7100 });
            n.handle_input(
                Instant::ZERO,
                Input::Received {
                    link: LinkId(1),
                    msg,
                },
            );
            outputs(n)
        };
        let out = ask(&mut n, 5);
        assert!(out.iter().any(|o| matches!(o,
            Output::DialBack { remote, nonce: 5 } if *remote == PeerAddr::V4([198, 51, 100, 9], 7100))));
        assert!(out.iter().any(|o| matches!(o,
            Output::Send { msg: Message::Ctl(Control::DialBackAnswer { dialing: true, observed }), .. }
                if observed.same_ip(&PeerAddr::V4([198, 51, 100, 9], 0)))));
        // Again on the same link: answered, not dialled.
        let out = ask(&mut n, 6);
        assert!(!out.iter().any(|o| matches!(o, Output::DialBack { .. })));
        assert!(out.iter().any(|o| matches!(
            o,
            Output::Send {
                msg: Message::Ctl(Control::DialBackAnswer { dialing: false, .. }),
                ..
            }
        )));
    }

    #[test]
    fn an_introduction_from_a_non_partner_or_of_ourselves_is_dropped() {
        let mut n = node();
        link(&mut n, 1, [198, 51, 100, 9], false);
        link(&mut n, 2, [198, 51, 100, 10], true);
        let introduce = |n: &mut Node<SimPayload>, link, id| {
            let msg = Message::Ctl(Control::Introduce {
                id: PeerId(id),
                addr: PeerAddr::V4([203, 0, 113, 7], 7000),
                delay_ms: 300,
            });
            n.handle_input(
                Instant::ZERO,
                Input::Received {
                    link: LinkId(link),
                    msg,
                },
            );
            outputs(n)
                .into_iter()
                .filter(|o| matches!(o, Output::Punch { .. }))
                .count()
        };
        // Our reach is unknown, not reachable: a partner's introduction is acted on...
        assert_eq!(introduce(&mut n, 1, 77), 0, "not a partner");
        assert_eq!(introduce(&mut n, 2, 1), 0, "ourselves");
        assert_eq!(introduce(&mut n, 2, 77), 1);
        // ...once: the punch is under way.
        assert_eq!(introduce(&mut n, 2, 77), 0);
    }

    const V6: PeerAddr = PeerAddr::V6(
        [0x20, 1, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5],
        7000,
    );

    fn ctl_sent(out: Vec<Output<SimPayload>>) -> Vec<(LinkId, Control)> {
        out.into_iter()
            .filter_map(|o| match o {
                Output::Send {
                    link,
                    msg: Message::Ctl(c),
                } => Some((link, c)),
                _ => None,
            })
            .collect()
    }

    /// Home routers route IPv6 but most drop what comes in unasked: a box's IPv6 address
    /// goes into its record only once a partner dialled it, asked on another link than the
    /// IPv4 dial-back (an answer does not name its request). A dial-back that does not come
    /// leaves it out.
    #[test]
    fn an_ipv6_address_is_gossiped_only_once_a_partner_dialled_it() {
        for proved in [true, false] {
            let mut n = node();
            n.joined = true;
            link(&mut n, 1, [198, 51, 100, 10], true);
            link(&mut n, 2, [198, 51, 100, 11], true);
            n.handle_input(
                Instant::ZERO,
                Input::Reachability {
                    reachable: None,
                    external: None,
                    v6: Some(V6),
                    via: ReachVia::Config,
                },
            );
            assert_eq!(n.own_record().v6, None);
            // Not dialable yet: nothing to announce.
            assert!(ctl_sent(outputs(&mut n)).is_empty());
            n.reach_tick();
            let said = ctl_sent(outputs(&mut n));
            let v4 = said.iter().find_map(|(l, c)| match c {
                Control::DialBackRequest { nonce, .. } => Some((*l, *nonce)),
                _ => None,
            });
            let Some((l6, nonce)) = said.iter().find_map(|(l, c)| match c {
                Control::DialBackRequestV6 { nonce, addr } if *addr == V6 => Some((*l, *nonce)),
                _ => None,
            }) else {
                panic!("no IPv6 dial-back asked: {said:?}");
            };
            let Some((l4, nonce4)) = v4.filter(|v| v.0 != l6) else {
                panic!("no IPv4 dial-back on another link: {said:?}");
            };
            let dialing = |n: &mut Node<SimPayload>, link| {
                let msg = Message::Ctl(Control::DialBackAnswer {
                    observed: PeerAddr::V4([203, 0, 113, 9], 40_000),
                    dialing: true,
                });
                n.handle_input(Instant::ZERO, Input::Received { link, msg });
            };
            dialing(&mut n, l4);
            if proved {
                n.handle_input(Instant::ZERO, Input::DialBackProof { nonce: nonce4 });
            }
            dialing(&mut n, l6);
            outputs(&mut n);
            if proved {
                n.handle_input(Instant::ZERO, Input::DialBackProof { nonce });
                assert_eq!(n.own_record().v6, Some(V6));
                let said = ctl_sent(outputs(&mut n));
                let told = said
                    .iter()
                    .filter(|(_, c)| matches!(c, Control::Members(m) if m[0].v6 == Some(V6)))
                    .count();
                assert_eq!(told, 2, "every partner hears it: {said:?}");
            } else {
                let later = Instant::ZERO + crate::proto::reach::DIAL_BACK_WAIT;
                n.now = later;
                n.reach_tick();
                assert_eq!(n.reachability().v6_open, Some(false));
                assert_eq!(n.own_record().v6, None);
            }
        }
    }

    /// The answerer's side: it dials the named IPv6 address for a partner on an IPv4 link,
    /// the link's own IP on an IPv6 link, and nothing (answering so) without IPv6 itself.
    #[test]
    fn an_ipv6_dial_back_goes_to_the_named_address_or_the_links_own_ip() {
        let ask = |n: &mut Node<SimPayload>, link: u64| {
            let msg = Message::Ctl(Control::DialBackRequestV6 { nonce: 9, addr: V6 });
            n.handle_input(
                Instant::ZERO,
                Input::Received {
                    link: LinkId(link),
                    msg,
                },
            );
            let out = outputs(n);
            let dialed = out.iter().find_map(|o| match o {
                Output::DialBack { remote, nonce: 9 } => Some(*remote),
                _ => None,
            });
            let dialing = out.iter().find_map(|o| match o {
                Output::Send {
                    msg: Message::Ctl(Control::DialBackAnswer { dialing, .. }),
                    ..
                } => Some(*dialing),
                _ => None,
            });
            (dialed, dialing)
        };
        let mut n = node();
        link(&mut n, 1, [198, 51, 100, 9], true);
        assert_eq!(ask(&mut n, 1), (None, Some(false)), "no IPv6 of its own");
        n.handle_input(
            Instant::ZERO,
            Input::Reachability {
                reachable: None,
                external: None,
                v6: Some(PeerAddr::V6(
                    [0x20, 1, 0xd, 0xb8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                    7000,
                )),
                via: ReachVia::Config,
            },
        );
        outputs(&mut n);
        link(&mut n, 2, [198, 51, 100, 10], true);
        assert_eq!(ask(&mut n, 2), (Some(V6), Some(true)));
        link(&mut n, 3, [198, 51, 100, 11], false);
        assert_eq!(ask(&mut n, 3), (None, Some(false)), "not a partner");
        // Over an IPv6 link: the link's own IP, the named port.
        let from = [0x20, 1, 0xd, 0xb8, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
        n.handle_input(
            Instant::ZERO,
            Input::LinkUp {
                link: LinkId(4),
                remote: PeerAddr::V6(from, 40_000),
                outbound: false,
            },
        );
        for c in [
            Control::Hello(Hello {
                magic: MAGIC,
                version: VERSION,
                channel: ChannelId([1; 32]),
                peer_id: PeerId(104),
                listen_port: 7000,
                role: Role::Peer,
                upload_kbps: 768,
            }),
            Control::PartnerRequest { partners: 1 },
        ] {
            let msg = Message::Ctl(c);
            n.handle_input(
                Instant::ZERO,
                Input::Received {
                    link: LinkId(4),
                    msg,
                },
            );
        }
        outputs(&mut n);
        assert_eq!(ask(&mut n, 4), (Some(PeerAddr::V6(from, 7000)), Some(true)));
    }

    /// The router maps our port after we joined (our record at the origin says the listen
    /// port, reach unknown): every partner hears the mapped address at once, once.
    #[test]
    fn a_mapping_made_after_the_join_is_announced_to_partners_at_once() {
        let mut n = node();
        n.joined = true;
        link(&mut n, 1, [198, 51, 100, 10], true);
        link(&mut n, 2, [198, 51, 100, 11], false);
        let map = |n: &mut Node<SimPayload>| {
            n.handle_input(
                Instant::ZERO,
                Input::Reachability {
                    reachable: Some(true),
                    external: Some(PeerAddr::V4([203, 0, 113, 50], 45_049)),
                    v6: None,
                    via: ReachVia::PortMapping,
                },
            );
            outputs(n)
                .into_iter()
                .filter_map(|o| match o {
                    Output::Send {
                        link,
                        msg: Message::Ctl(Control::Members(m)),
                    } => Some((link, m)),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let sent = map(&mut n);
        assert_eq!(sent.len(), 1, "to the partner only: {sent:?}");
        let (link, m) = &sent[0];
        assert_eq!(*link, LinkId(1));
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].id, PeerId(1));
        assert_eq!(m[0].addr.port(), 45_049);
        assert_eq!(m[0].reach, Reach::Reachable);
        assert!(m[0].seq >= 1, "newer than the record the join made");
        // The same mapping renewed: nothing new to say.
        assert!(map(&mut n).is_empty());
    }

    /// A box whose router mapped its port before it joined (`run` keeps one mapping across
    /// zaps): its join flight carries its record, newer than the one the join makes.
    #[test]
    fn a_join_says_the_mapped_address_in_its_first_flight() {
        let mut n = node();
        n.handle_input(
            Instant::ZERO,
            Input::Reachability {
                reachable: Some(true),
                external: Some(PeerAddr::V4([203, 0, 113, 50], 45_049)),
                v6: None,
                via: ReachVia::PortMapping,
            },
        );
        let origin = PeerAddr::V4([198, 51, 100, 1], 7000);
        n.command(
            Instant::ZERO,
            Command::Join {
                bootstrap: vec![origin],
            },
        )
        .unwrap();
        outputs(&mut n);
        n.handle_input(
            Instant::ZERO,
            Input::LinkUp {
                link: LinkId(1),
                remote: origin,
                outbound: true,
            },
        );
        let said: Vec<Control> = outputs(&mut n)
            .into_iter()
            .filter_map(|o| match o {
                Output::Send {
                    msg: Message::Ctl(c),
                    ..
                } => Some(c),
                _ => None,
            })
            .collect();
        let join = said.iter().position(|c| matches!(c, Control::Join));
        let rec = said.iter().position(|c| {
            matches!(c, Control::Members(m) if m.len() == 1 && m[0].id == PeerId(1)
                && m[0].addr.port() == 45_049 && m[0].reach == Reach::Reachable && m[0].seq >= 1)
        });
        assert!(
            matches!((join, rec), (Some(j), Some(r)) if j < r),
            "{said:?}"
        );
    }

    /// A box behind a home router: a member at the router's own IP is behind it too, and the
    /// router does not loop a packet back to its own address.
    #[test]
    fn a_member_behind_our_own_router_is_neither_dialled_nor_punched() {
        let wan = [203, 0, 113, 50];
        let mut n = node();
        n.joined = true;
        n.handle_input(
            Instant::ZERO,
            Input::Reachability {
                reachable: Some(false),
                external: Some(PeerAddr::V4(wan, 40_000)),
                v6: None,
                via: ReachVia::DialBack,
            },
        );
        link(&mut n, 1, [198, 51, 100, 10], true);
        let rec = |id, addr| MemberEntry {
            id: PeerId(id),
            addr,
            seq: 1,
            num_partners: 1,
            max_partners: 8,
            ttl_s: 60,
            reach: Reach::Reachable,
            v6: None,
        };
        let neighbour = PeerAddr::V4(wan, 7002);
        let elsewhere = PeerAddr::V4([198, 51, 100, 20], 7000);
        let msg = Message::Ctl(Control::Members(vec![
            rec(55, neighbour),
            rec(56, elsewhere),
        ]));
        n.handle_input(
            Instant::ZERO,
            Input::Received {
                link: LinkId(1),
                msg,
            },
        );
        let dials: Vec<PeerAddr> = outputs(&mut n)
            .into_iter()
            .filter_map(|o| match o {
                Output::Dial { remote } => Some(remote),
                _ => None,
            })
            .collect();
        assert_eq!(dials, vec![elsewhere]);

        let introduce = |n: &mut Node<SimPayload>, id, addr| {
            let msg = Message::Ctl(Control::Introduce {
                id: PeerId(id),
                addr,
                delay_ms: 300,
            });
            n.handle_input(
                Instant::ZERO,
                Input::Received {
                    link: LinkId(1),
                    msg,
                },
            );
            outputs(n)
                .into_iter()
                .filter(|o| matches!(o, Output::Punch { .. }))
                .count()
        };
        assert_eq!(introduce(&mut n, 57, PeerAddr::V4(wan, 7003)), 0);
        assert_eq!(
            introduce(&mut n, 58, PeerAddr::V4([198, 51, 100, 30], 7000)),
            1
        );
    }
}
