//! Model 1: resume and repair.
//!
//! A bucket takes writes, deletes and purges on two keys, loses messages to
//! supersession (interior and head), marker compaction, ageing out on an
//! evicting bucket and recreation. A consumer with a durable fold (fold,
//! cursor and eviction memo committed atomically) crashes and restarts,
//! resumes (K1, K2, K3), watches live with the floor guard (K4), and repairs
//! an expired cursor through K7 and K8 by re-listing or by restoring an
//! artifact (K6, K10). Every decision is a call into `slipstream_protocol`.

use slipstream_protocol::{
    Eviction, FloorVerdict, RepairMode, RepairPlan, RestoreAction, cursor_beyond_log,
    floor_verdict, gap_needs_floor_check, listing_is_truth, next_high_water, plan_repair,
    restore_allowed, restore_key, resume_start_sequence, resume_window_ok,
};
use stateright::{Model, Property};

use crate::bucket::{AGEING, Bucket, KEYS, RETAINING, TTL_MARKERS, Version, WriteOp};

/// How the modelled bucket retains current values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Retention {
    /// Only supersession and marker compaction remove messages: the listing
    /// is the truth.
    Retaining,
    /// Age or limits also remove current values from the head.
    Evicting,
    /// Per-message TTL with limit markers and nothing else (a nats.go or
    /// `nats` CLI bucket with `--marker-ttl`): puts expire into server
    /// delete markers; the listing stays the truth (K7).
    MessageTtl,
}

impl Retention {
    /// The bucket's configuration as the kernel sees it.
    const fn eviction(self) -> Eviction {
        match self {
            Self::Retaining => RETAINING,
            Self::Evicting => AGEING,
            Self::MessageTtl => TTL_MARKERS,
        }
    }
}

/// Whether the operator may switch eviction off while the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EvictionSwitch {
    /// Retention never changes.
    Fixed,
    /// Eviction may be switched off once, after the consumer has read the
    /// retention while it was evicting (R5's periodic read).
    MaySwitchOff,
}

/// Whether the bucket may be deleted and recreated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Recreation {
    /// The bucket keeps its identity.
    Never,
    /// The bucket is recreated at most once; the new bucket stays behind the
    /// consumer's cursor until the consumer has noticed (K3's domain; a
    /// recreated bucket that already grew past the cursor is the identity
    /// check's job, R7).
    Once,
}

/// What the consumer watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The whole bucket: every retained message is delivered, so the live
    /// floor guard (K4) runs.
    All,
    /// A prefix covering only the first key: gaps are filtered subjects as
    /// often as evictions, so K4 cannot run and the resume-time checks are
    /// the only guard (N8).
    Prefix,
}

impl Scope {
    /// The keys in scope are `0..keys()`.
    const fn keys(self) -> usize {
        match self {
            Self::All => KEYS,
            Self::Prefix => 1,
        }
    }
}

/// How the operator's marker purge removes delete and purge markers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MarkerPurge {
    /// Only markers at the head of the stream: the first sequence moves
    /// past every removed marker, so K1 sees the loss.
    AtHead,
    /// Every marker, wherever it is (NATS `purge_deletes`): a marker behind
    /// an older live value vanishes without moving the first sequence.
    Anywhere,
}

/// Which write operations the environment issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteOps {
    /// Puts and deletes.
    PutDelete,
    /// Puts, deletes and purges.
    PutDeletePurge,
}

impl WriteOps {
    fn ops(self) -> &'static [WriteOp] {
        match self {
            Self::PutDelete => &[WriteOp::Put, WriteOp::Delete],
            Self::PutDeletePurge => &[WriteOp::Put, WriteOp::Delete, WriteOp::Purge],
        }
    }
}

/// One configuration of the resume-and-repair model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResumeRepairConfig {
    /// Name shown in the table.
    pub name: &'static str,
    /// The bucket's retention.
    pub retention: Retention,
    /// What the consumer watches.
    pub scope: Scope,
    /// Which writes the environment issues.
    pub ops: WriteOps,
    /// Total writes (puts, deletes, purges), across recreations.
    pub writes: u8,
    /// Marker purges the operator may run.
    pub compactions: u8,
    /// Which markers a purge removes.
    pub marker_purge: MarkerPurge,
    /// Whether eviction may be switched off.
    pub switch: EvictionSwitch,
    /// Whether the bucket may be recreated.
    pub recreation: Recreation,
    /// Artifacts an always-current exporter may publish.
    pub exports: u8,
    /// Consumer crashes.
    pub crashes: u8,
    /// The consumer's repair mode (K8).
    pub mode: RepairMode,
}

/// A forged kernel input or a removed step in the resume-and-repair model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResumeMutation {
    /// K1 is fed the first sequence the server's silent clamp implies
    /// (`cursor + 1`) instead of the real one.
    TrustSilentClamp,
    /// K3 is fed an unbounded last sequence: a cursor past the log is
    /// trusted.
    IgnoreCursorBeyondLog,
    /// K7 is fed `seen_evicting = false`: the memo is ignored.
    ForgetEvictionMemo,
    /// K7 is fed the old N11: allowing per-message TTL counts as evicting
    /// current values.
    TtlCountsAsEviction,
    /// K6 is fed a first sequence inside the artifact's window.
    RestoreOutsideWindow,
    /// K10 is fed `listed_live = false`: keys the artifact lacks are deleted
    /// even when the bucket lists them live.
    PhantomDelete,
}

/// The resume-and-repair model: a configuration plus at most one mutation.
#[derive(Debug, Clone, Copy)]
pub struct ResumeRepairModel {
    /// The configuration.
    pub config: ResumeRepairConfig,
    /// The mutation, if any.
    pub mutation: Option<ResumeMutation>,
}

/// The consumer's durable store: fold, cursor and memo, committed together.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Store {
    fold: [Option<Version>; KEYS],
    cursor: u64,
    /// The bucket identity the cursor was taken against.
    epoch: u8,
    seen_evicting: bool,
}

/// An artifact: a fold of the bucket's truth at `cursor`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Artifact {
    fold: [Option<Version>; KEYS],
    cursor: u64,
    epoch: u8,
}

/// What the consumer is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Not running (before the first start or after a crash).
    Down,
    /// A watch reading from `next`, having delivered up to `frontier`.
    Watching {
        /// Next sequence the watch reads.
        next: u64,
        /// Highest sequence delivered or resumed from (K4's frontier).
        frontier: u64,
    },
    /// Stopped loudly (refused relist, no usable artifact).
    Failed,
}

const REPAIRED_RELIST: u8 = 1;
const REPAIRED_RESTORE: u8 = 2;
const EXPIRED_AT_RESUME: u8 = 4;
const EXPIRED_BEYOND_LOG: u8 = 8;
const EXPIRED_LIVE: u8 = 16;

/// Model-only bookkeeping the properties read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Ghost {
    observed_eviction: bool,
    events: u8,
    restore_broke_rule: bool,
    cursor_regressed: bool,
    repair_left_gap: bool,
}

/// A state of the resume-and-repair model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResumeState {
    bucket: Bucket,
    writes: u8,
    compactions: u8,
    exports: u8,
    crashes: u8,
    switched_off: bool,
    recreated: bool,
    artifact: Option<Artifact>,
    store: Store,
    phase: Phase,
    ghost: Ghost,
}

/// A step of the environment or the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResumeAction {
    /// A client writes to a key.
    Write(u8, WriteOp),
    /// The head message ages out.
    AgeOut,
    /// A put's TTL runs out (counted as a write: the server writes its
    /// marker).
    Expire(u8),
    /// The operator purges delete markers.
    CompactMarkers,
    /// The operator switches eviction off.
    SwitchOffEviction,
    /// The bucket is deleted and recreated.
    Recreate,
    /// The exporter publishes an artifact of the truth.
    Export,
    /// The consumer starts from its store.
    Start,
    /// The watch delivers its next message.
    Deliver,
    /// The backstop probe runs the floor check without a delivery.
    Probe,
    /// The periodic retention read.
    ReadRetention,
    /// The consumer crashes.
    Crash,
}

/// Why a repair runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    Resume,
    BeyondLog,
    Live,
}

impl ResumeRepairModel {
    /// K7's first input as the backends report it, or forged.
    fn evicting(&self, s: &ResumeState) -> bool {
        match self.mutation {
            Some(ResumeMutation::TtlCountsAsEviction) => {
                s.bucket.evicting() || s.bucket.eviction.per_message_ttl
            }
            _ => s.bucket.evicting(),
        }
    }

    fn observe_retention(&self, s: &mut ResumeState) {
        // Evidence of eviction: the listing would not be the truth even
        // without the memo.
        if !listing_is_truth(self.evicting(s), s.bucket.first(), false) {
            s.ghost.observed_eviction = true;
            s.store.seen_evicting = true;
        }
    }

    fn start(&self, s: &mut ResumeState) {
        self.observe_retention(s);
        let cursor = s.store.cursor;
        let last = match self.mutation {
            Some(ResumeMutation::IgnoreCursorBeyondLog) => u64::MAX,
            _ => s.bucket.last(),
        };
        let first = match self.mutation {
            Some(ResumeMutation::TrustSilentClamp) => cursor.saturating_add(1),
            _ => s.bucket.first(),
        };
        if cursor_beyond_log(cursor, last) {
            self.repair(s, Expiry::BeyondLog);
        } else if !resume_window_ok(cursor, first) {
            self.repair(s, Expiry::Resume);
        } else {
            s.phase = match resume_start_sequence(cursor) {
                Some(next) => Phase::Watching {
                    next,
                    frontier: cursor,
                },
                None => Phase::Failed,
            };
        }
    }

    fn commit_cursor(s: &mut ResumeState, cursor: u64) {
        if s.store.epoch == s.bucket.epoch && cursor < s.store.cursor {
            s.ghost.cursor_regressed = true;
        }
        s.store.cursor = cursor;
    }

    fn repair(&self, s: &mut ResumeState, why: Expiry) {
        s.ghost.events |= match why {
            Expiry::Resume => EXPIRED_AT_RESUME,
            Expiry::BeyondLog => EXPIRED_BEYOND_LOG,
            Expiry::Live => EXPIRED_LIVE,
        };
        self.observe_retention(s);
        if s.store.epoch != s.bucket.epoch {
            // The retention read names a new identity: the old cursor means
            // nothing in this bucket.
            s.store.epoch = s.bucket.epoch;
            s.store.cursor = 0;
        }
        let memo = match self.mutation {
            Some(ResumeMutation::ForgetEvictionMemo) => false,
            _ => s.store.seen_evicting,
        };
        let truth = listing_is_truth(self.evicting(s), s.bucket.first(), memo);
        match plan_repair(self.config.mode, Some(truth)) {
            RepairPlan::Relist | RepairPlan::RelistOnly => self.relist(s),
            RepairPlan::RefuseRelist => s.phase = Phase::Failed,
            RepairPlan::Restore => self.restore(s),
        }
    }

    fn relist(&self, s: &mut ResumeState) {
        // Synthetic deletes for fold keys the listing lacks, committed
        // before the state-sync watch delivers any put.
        for key in 0..self.config.scope.keys() {
            if s.store.fold[key].is_some() && !s.bucket.listed_live(key as u8) {
                s.store.fold[key] = None;
            }
        }
        s.ghost.events |= REPAIRED_RELIST;
        let first = s.bucket.first();
        if !s
            .bucket
            .tail_completes(&s.store.fold, first - 1, self.config.scope.keys())
        {
            s.ghost.repair_left_gap = true;
        }
        s.phase = Phase::Watching {
            next: first,
            frontier: first - 1,
        };
    }

    fn restore(&self, s: &mut ResumeState) {
        let Some(artifact) = s.artifact.clone().filter(|a| a.epoch == s.bucket.epoch) else {
            s.phase = Phase::Failed;
            return;
        };
        let a = artifact.cursor;
        let local = s.store.cursor;
        let first = match self.mutation {
            Some(ResumeMutation::RestoreOutsideWindow) => a.saturating_add(1),
            _ => s.bucket.first(),
        };
        if !restore_allowed(a, local, first) {
            s.phase = Phase::Failed;
            return;
        }
        for key in 0..self.config.scope.keys() {
            let old = s.store.fold[key];
            let listed = s.bucket.listed_live(key as u8);
            let listed_input = match self.mutation {
                Some(ResumeMutation::PhantomDelete) => false,
                _ => listed,
            };
            let art = artifact.fold[key];
            let action = restore_key(
                old.map(|v| v.0),
                art.map(|v| v.0),
                old.is_some() && old == art,
                listed_input,
            );
            let new = match action {
                RestoreAction::Keep => old,
                RestoreAction::Take => art,
                RestoreAction::Delete => None,
            };
            let backward = matches!((old, new), (Some(o), Some(n)) if n.0 < o.0);
            let phantom = old.is_some() && new.is_none() && listed;
            if backward || phantom {
                s.ghost.restore_broke_rule = true;
            }
            s.store.fold[key] = new;
        }
        Self::commit_cursor(s, a);
        if !s
            .bucket
            .tail_completes(&s.store.fold, a, self.config.scope.keys())
        {
            s.ghost.repair_left_gap = true;
        }
        s.ghost.events |= REPAIRED_RESTORE;
        s.phase = Phase::Watching {
            next: a + 1,
            frontier: a,
        };
    }

    fn deliver(&self, s: &mut ResumeState) -> bool {
        let Phase::Watching { next, frontier } = s.phase else {
            return false;
        };
        let Some((seq, msg)) = s.bucket.next_retained_in(next, self.config.scope.keys()) else {
            return false;
        };
        if self.config.scope == Scope::All
            && gap_needs_floor_check(frontier, seq)
            && floor_verdict(frontier, s.bucket.first()) == FloorVerdict::Overrun
        {
            self.repair(s, Expiry::Live);
            return true;
        }
        s.store.fold[msg.key as usize] = msg.op.is_put().then_some((seq, s.bucket.epoch));
        let cursor = next_high_water(Some(s.store.cursor), Some(seq)).unwrap_or(seq);
        Self::commit_cursor(s, cursor);
        s.phase = Phase::Watching {
            next: seq + 1,
            frontier: seq,
        };
        true
    }

    fn probe(&self, s: &mut ResumeState) -> bool {
        let Phase::Watching { frontier, .. } = s.phase else {
            return false;
        };
        if self.config.scope == Scope::All
            && floor_verdict(frontier, s.bucket.first()) == FloorVerdict::Overrun
        {
            self.repair(s, Expiry::Live);
            return true;
        }
        false
    }

    fn consumer_step(&self, s: &ResumeState, action: ResumeAction) -> Option<ResumeState> {
        let mut n = s.clone();
        let changed = match action {
            ResumeAction::Start => {
                if n.phase != Phase::Down {
                    return None;
                }
                self.start(&mut n);
                true
            }
            ResumeAction::Deliver => self.deliver(&mut n),
            ResumeAction::Probe => self.probe(&mut n),
            ResumeAction::ReadRetention => {
                if !matches!(n.phase, Phase::Watching { .. }) {
                    return None;
                }
                self.observe_retention(&mut n);
                true
            }
            ResumeAction::Crash => {
                if n.crashes >= self.config.crashes || !matches!(n.phase, Phase::Watching { .. }) {
                    return None;
                }
                n.crashes += 1;
                n.phase = Phase::Down;
                true
            }
            _ => return None,
        };
        (changed && n != *s).then_some(n)
    }

    /// Quiescent: the consumer is watching and no consumer step (delivery,
    /// probe, retention read) changes anything. A prefix-scoped watch has no
    /// live guard (N8): its guarantee is the resume-time check, so it is
    /// quiescent only when a restart would change nothing either.
    fn quiescent(&self, s: &ResumeState) -> bool {
        let idle = matches!(s.phase, Phase::Watching { .. })
            && [
                ResumeAction::Deliver,
                ResumeAction::Probe,
                ResumeAction::ReadRetention,
            ]
            .into_iter()
            .all(|a| self.consumer_step(s, a).is_none());
        if !idle || self.config.scope == Scope::All {
            return idle;
        }
        let mut restarted = s.clone();
        restarted.phase = Phase::Down;
        self.start(&mut restarted);
        restarted.store == s.store && restarted.phase == s.phase
    }

    fn converged(&self, s: &ResumeState) -> bool {
        (0..self.config.scope.keys()).all(|k| s.store.fold[k] == s.bucket.truth(k as u8))
    }

    fn cursor_names_only_applied(&self, s: &ResumeState) -> bool {
        if s.store.epoch != s.bucket.epoch {
            return true;
        }
        (0..self.config.scope.keys()).all(|k| match s.bucket.settled_at(k as u8, s.store.cursor) {
            Some((seq, m)) if m.op.is_put() => s.store.fold[k] == Some((seq, s.bucket.epoch)),
            Some(_) => s.store.fold[k].is_none(),
            None => true,
        })
    }
}

impl Model for ResumeRepairModel {
    type State = ResumeState;
    type Action = ResumeAction;

    fn init_states(&self) -> Vec<ResumeState> {
        vec![ResumeState {
            bucket: Bucket::new(self.config.retention.eviction()),
            writes: 0,
            compactions: 0,
            exports: 0,
            crashes: 0,
            switched_off: false,
            recreated: false,
            artifact: None,
            store: Store {
                fold: [None; KEYS],
                cursor: 0,
                epoch: 0,
                seen_evicting: false,
            },
            phase: Phase::Down,
            ghost: Ghost::default(),
        }]
    }

    fn actions(&self, s: &ResumeState, actions: &mut Vec<ResumeAction>) {
        let c = &self.config;
        let behind_cursor = s.store.epoch == s.bucket.epoch || s.bucket.last() + 1 < s.store.cursor;
        if s.writes < c.writes && behind_cursor {
            for key in 0..KEYS as u8 {
                for &op in c.ops.ops() {
                    actions.push(ResumeAction::Write(key, op));
                }
            }
        }
        if s.bucket.evicting() {
            actions.push(ResumeAction::AgeOut);
        }
        if s.bucket.eviction.per_message_ttl && s.writes < c.writes {
            for key in 0..KEYS as u8 {
                actions.push(ResumeAction::Expire(key));
            }
        }
        if s.compactions < c.compactions {
            actions.push(ResumeAction::CompactMarkers);
        }
        if c.switch == EvictionSwitch::MaySwitchOff && !s.switched_off && s.ghost.observed_eviction
        {
            actions.push(ResumeAction::SwitchOffEviction);
        }
        if c.recreation == Recreation::Once && !s.recreated {
            actions.push(ResumeAction::Recreate);
        }
        if s.exports < c.exports {
            actions.push(ResumeAction::Export);
        }
        actions.extend([
            ResumeAction::Start,
            ResumeAction::Deliver,
            ResumeAction::Probe,
            ResumeAction::ReadRetention,
            ResumeAction::Crash,
        ]);
    }

    fn next_state(&self, s: &ResumeState, action: ResumeAction) -> Option<ResumeState> {
        let mut n = s.clone();
        match action {
            ResumeAction::Write(key, op) => {
                n.bucket.write(key, op);
                n.writes += 1;
            }
            ResumeAction::AgeOut => {
                if !n.bucket.age_out() {
                    return None;
                }
            }
            ResumeAction::Expire(key) => {
                if !n.bucket.expire(key) {
                    return None;
                }
                n.writes += 1;
            }
            ResumeAction::CompactMarkers => {
                let changed = match self.config.marker_purge {
                    MarkerPurge::AtHead => n.bucket.compact_head_markers(),
                    MarkerPurge::Anywhere => n.bucket.compact_markers(),
                };
                if !changed {
                    return None;
                }
                n.compactions += 1;
            }
            ResumeAction::SwitchOffEviction => {
                n.bucket.eviction.max_age = false;
                n.bucket.eviction.discard_old_limit = false;
                n.switched_off = true;
            }
            ResumeAction::Recreate => {
                n.bucket.recreate();
                n.recreated = true;
                n.artifact = None;
                if matches!(n.phase, Phase::Watching { .. }) {
                    // The watch's stream is gone; the consumer restarts.
                    n.phase = Phase::Down;
                }
            }
            ResumeAction::Export => {
                let last = n.bucket.last();
                let artifact = Artifact {
                    fold: [n.bucket.truth(0), n.bucket.truth(1)],
                    cursor: last,
                    epoch: n.bucket.epoch,
                };
                if n.artifact.as_ref() == Some(&artifact) {
                    return None;
                }
                n.artifact = Some(artifact);
                n.exports += 1;
            }
            _ => return self.consumer_step(s, action),
        }
        Some(n)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut props = vec![
            Property::always(
                "cursor names only applied data",
                |m: &Self, s: &ResumeState| m.cursor_names_only_applied(s),
            ),
            Property::always("committed cursor never regresses", |_, s: &ResumeState| {
                !s.ghost.cursor_regressed
            }),
            Property::always(
                "restore never moves a key backward or deletes a live key",
                |_, s: &ResumeState| !s.ghost.restore_broke_rule,
            ),
            Property::always(
                "a repair leaves fold + tail = truth",
                |_, s: &ResumeState| !s.ghost.repair_left_gap,
            ),
            Property::always(
                "caught-up fold equals writes minus real deletes",
                |m: &Self, s: &ResumeState| !m.quiescent(s) || m.converged(s),
            ),
        ];
        let c = &self.config;
        if c.retention == Retention::MessageTtl && c.mode != RepairMode::Restore {
            props.push(Property::always(
                "a bucket that only allows TTL never refuses a repair",
                |_, s: &ResumeState| s.phase != Phase::Failed,
            ));
        }
        if c.mode != RepairMode::Restore && c.retention != Retention::Evicting {
            props.push(Property::sometimes(
                "relist repair converges",
                |m: &Self, s: &ResumeState| {
                    s.ghost.events & REPAIRED_RELIST != 0 && m.quiescent(s) && m.converged(s)
                },
            ));
            props.push(Property::sometimes(
                "resume expiry (K1) repaired",
                |m: &Self, s: &ResumeState| {
                    s.ghost.events & EXPIRED_AT_RESUME != 0 && m.quiescent(s)
                },
            ));
        }
        if c.retention != Retention::Evicting && c.scope == Scope::All {
            props.push(Property::sometimes(
                "live floor guard (K4) repaired",
                |m: &Self, s: &ResumeState| s.ghost.events & EXPIRED_LIVE != 0 && m.quiescent(s),
            ));
        }
        if c.exports > 0 {
            props.push(Property::sometimes(
                "restore repair converges",
                |m: &Self, s: &ResumeState| {
                    s.ghost.events & REPAIRED_RESTORE != 0 && m.quiescent(s) && m.converged(s)
                },
            ));
        }
        if c.switch == EvictionSwitch::MaySwitchOff {
            props.push(Property::sometimes(
                "memo (K7) forces restore after eviction is switched off",
                |m: &Self, s: &ResumeState| {
                    s.switched_off
                        && s.ghost.events & REPAIRED_RESTORE != 0
                        && m.quiescent(s)
                        && m.converged(s)
                },
            ));
        }
        if c.recreation == Recreation::Once {
            props.push(Property::sometimes(
                "cursor beyond log (K3) repaired",
                |m: &Self, s: &ResumeState| {
                    s.ghost.events & EXPIRED_BEYOND_LOG != 0 && m.quiescent(s) && m.converged(s)
                },
            ));
        }
        props
    }
}
