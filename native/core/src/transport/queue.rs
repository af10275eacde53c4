//! The queue of one outgoing connection: the state machine behind the
//! delivery guarantees (PROTOCOL.md, *Delivery guarantees*), with no I/O.
//!
//! A stanza is `pending` (to be written) or `unacked` (written, waiting for
//! the receiver's acknowledgement). Writing numbers a fresh stanza with the
//! next sequence number; a resent one keeps its number. After a
//! reconnection what the receiver says it has is done and the rest is
//! written again first, in order. A connection that cannot be made gives
//! back what was never written (the receiver cannot have it) and keeps the
//! rest until it gives up on them, starting a new sequence session. A
//! stanza the receiver refuses (a version-2 `Nack`) leaves the queue.
//!
//! Two clocks run across reconnections and only acknowledgement progress
//! resets them, so a peer that accepts connections but never acknowledges
//! cannot keep stanzas here for ever: how long written stanzas have waited
//! for an acknowledgement (`connections.ack_timeout`), and how long the
//! connection has been failing (the give-up delay).
//!
//! The connection task (`conn.rs`) holds it under a lock and calls these
//! transitions; the property test below checks them against a model.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::envelope::Envelope;
use crate::transport::frame::Prior;

/// Room reserved for a batch: a 256 KiB write holds about 500 stanzas of
/// half a kilobyte; a batch of small stanzas grows past it.
const MAX_BATCH_GUESS: usize = 1024;

/// A stanza in a connection queue.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub(crate) env: Envelope,
    pub(crate) enqueued: Instant,
    /// 0 until the stanza is first written.
    pub(crate) seq: u64,
}

/// The pending and unacknowledged stanzas of one connection.
#[derive(Debug)]
pub(crate) struct ConnQueue {
    pending: VecDeque<Outbound>,
    unacked: VecDeque<Outbound>,
    next_seq: u64,
    failed: bool,
    /// When the connection started failing, kept across reconnections
    /// until an acknowledgement makes progress (None while it works).
    failed_since: Option<Instant>,
    /// Since when written stanzas have waited without any acknowledgement
    /// progress (None when nothing written waits).
    waiting_since: Option<Instant>,
    /// Acknowledgements (and refusals) that removed stanzas: a connection
    /// compares it before and after to know whether it made progress.
    progress: u64,
}

impl Default for ConnQueue {
    fn default() -> ConnQueue {
        ConnQueue {
            pending: VecDeque::new(),
            unacked: VecDeque::new(),
            next_seq: 1,
            failed: false,
            failed_since: None,
            waiting_since: None,
            progress: 0,
        }
    }
}

/// Stanzas taken by the writer to encode outside the queue lock. Only the
/// writer takes from `pending` and numbers stanzas, so nothing moves
/// `next_seq` until the batch is filed back with [`ConnQueue::file`].
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) items: Vec<Outbound>,
    next_seq: u64,
    written: Vec<Outbound>,
}

impl Batch {
    /// The number `o` goes out under: its own when resent, the next one when fresh.
    pub(crate) fn seq_of(&self, o: &Outbound) -> u64 {
        if o.seq == 0 {
            self.next_seq
        } else {
            o.seq
        }
    }

    /// `o` was encoded: a fresh one spends its number; it waits for an ack.
    /// (One that failed to encode is simply not passed here: no number is
    /// spent on it, the receiver treats a gap as a protocol error.)
    pub(crate) fn written(&mut self, mut o: Outbound) {
        if o.seq == 0 {
            o.seq = self.next_seq;
            self.next_seq += 1;
        }
        self.written.push(o);
    }
}

impl ConnQueue {
    pub(crate) fn is_failed(&self) -> bool {
        self.failed
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.unacked.is_empty()
    }

    /// Queues a stanza; refused (handed back) while the connection is failing.
    /// `Ok(true)` when the queue of the writer was empty (it must be woken).
    pub(crate) fn push(&mut self, env: Envelope) -> Result<bool, Envelope> {
        if self.failed {
            return Err(env);
        }
        let was_empty = self.pending.is_empty();
        self.pending.push_back(Outbound {
            env,
            enqueued: Instant::now(),
            seq: 0,
        });
        Ok(was_empty)
    }

    /// Takes pending stanzas, in order, while their `cost` fits in `budget`
    /// (at least one when any is pending).
    pub(crate) fn take_batch(&mut self, budget: usize, cost: impl Fn(&Envelope) -> usize) -> Batch {
        let mut budget = budget;
        // Sized up front: growing it would move every stanza a few times.
        let mut items = Vec::with_capacity(self.pending.len().min(MAX_BATCH_GUESS));
        while budget > 0 {
            let Some(o) = self.pending.pop_front() else {
                break;
            };
            budget = budget.saturating_sub(cost(&o.env));
            items.push(o);
        }
        let written = Vec::with_capacity(items.len());
        Batch {
            items,
            next_seq: self.next_seq,
            written,
        }
    }

    /// Files what a batch wrote as unacknowledged.
    pub(crate) fn file(&mut self, batch: Batch) {
        self.next_seq = batch.next_seq;
        if !batch.written.is_empty() {
            self.waiting_since.get_or_insert_with(Instant::now);
        }
        self.unacked.extend(batch.written);
    }

    /// After a (re)connection: stanzas the receiver refused (listed in its
    /// answer) are returned; what it already has is done; the rest is sent
    /// again first, in order, with its sequence numbers. Returns how many
    /// are done and the refused ones. The clocks keep running: only an
    /// acknowledgement that makes progress stops them.
    pub(crate) fn resume(
        &mut self,
        received: Option<u64>,
        refused: &[u64],
    ) -> (usize, Vec<Envelope>) {
        self.failed = false;
        let mut rejected = Vec::new();
        for seq in refused {
            if let Some(i) = self.unacked.iter().position(|o| o.seq == *seq) {
                if let Some(o) = self.unacked.remove(i) {
                    rejected.push(o.env);
                }
            }
        }
        let done = match received {
            Some(last) => self.acked(last),
            None => 0,
        };
        if !rejected.is_empty() {
            self.progressed();
        }
        while let Some(o) = self.unacked.pop_back() {
            self.pending.push_front(o);
        }
        (done, rejected)
    }

    /// Removes what the receiver acknowledged; returns how many.
    pub(crate) fn acked(&mut self, seq: u64) -> usize {
        let mut n = 0;
        while self.unacked.front().is_some_and(|o| o.seq <= seq) {
            self.unacked.pop_front();
            n += 1;
        }
        if n > 0 {
            self.progressed();
        }
        n
    }

    /// The receiver refused stanza `seq` (a `Nack`): everything before it
    /// is acknowledged, and it leaves the queue. Returns how many were
    /// acknowledged and the refused stanza (None if it is not waiting here,
    /// e.g. a duplicate `Nack`).
    pub(crate) fn nacked(&mut self, seq: u64) -> (usize, Option<Envelope>) {
        let done = self.acked(seq.saturating_sub(1));
        if self.unacked.front().is_some_and(|o| o.seq == seq) {
            let refused = self.unacked.pop_front().map(|o| o.env);
            self.progressed();
            return (done, refused);
        }
        (done, None)
    }

    /// The receiver is taking stanzas: the connection works again, and
    /// what still waits has waited from now on.
    fn progressed(&mut self) {
        self.progress += 1;
        self.failed_since = None;
        self.waiting_since = if self.unacked.is_empty() && self.pending.iter().all(|o| o.seq == 0) {
            None
        } else {
            Some(Instant::now())
        };
    }

    /// How many acknowledgements made progress so far.
    pub(crate) fn progress(&self) -> u64 {
        self.progress
    }

    /// Whether written stanzas have waited `timeout` without any
    /// acknowledgement progress, across reconnections.
    pub(crate) fn ack_overdue(&self, timeout: Duration) -> bool {
        self.waiting_since.is_some_and(|t| t.elapsed() >= timeout)
    }

    /// Since when written stanzas have waited without acknowledgement
    /// progress.
    pub(crate) fn waiting_since(&self) -> Option<Instant> {
        self.waiting_since
    }

    /// Whether anything written waits for an acknowledgement.
    pub(crate) fn has_unacked(&self) -> bool {
        self.waiting_since.is_some()
    }

    /// The connection cannot be established. Stanzas never written are
    /// returned (the caller gives them back); written but unacknowledged
    /// ones stay, because the receiver may have them: a resumed connection
    /// settles them exactly.
    pub(crate) fn fail(&mut self) -> Vec<Envelope> {
        self.failed = true;
        self.failed_since.get_or_insert_with(Instant::now);
        let mut fresh = Vec::new();
        for o in std::mem::take(&mut self.pending) {
            if o.seq == 0 {
                fresh.push(o.env);
            } else {
                // Resent after a resume but not written again yet: their
                // numbers follow those already rewritten (the writer takes
                // from the front), so they go after them. (Putting them
                // first, as before the property test, broke the order of
                // `unacked`, which `acked` and a later resume rely on.)
                self.unacked.push_back(o);
            }
        }
        fresh
    }

    /// Whether the connection has failed for `after` with stanzas the
    /// receiver may never acknowledge: time to [`ConnQueue::give_up`].
    pub(crate) fn should_give_up(&self, after: Duration) -> bool {
        self.failed
            && matches!(self.failed_since, Some(t) if t.elapsed() >= after)
            && !self.unacked.is_empty()
    }

    /// Gives up the unacknowledged stanzas, each marked with the session
    /// (`old_session`, and its token, 0 for none) and seq it was written
    /// under, and restarts numbering (the caller starts a new sequence
    /// session). The connection still counts as failing since it did.
    pub(crate) fn give_up(&mut self, old_session: u64, old_token: u128) -> Vec<Envelope> {
        self.next_seq = 1;
        self.waiting_since = None;
        std::mem::take(&mut self.unacked)
            .into_iter()
            .map(|mut o| {
                o.env.prior = Some(Box::new(Prior {
                    session: old_session,
                    seq: o.seq,
                    token: old_token,
                }));
                o.env
            })
            .collect()
    }

    /// Everything, unacknowledged first, in order (a stop or a closed pool).
    pub(crate) fn take_all(&mut self) -> Vec<Envelope> {
        self.waiting_since = None;
        let unacked = std::mem::take(&mut self.unacked);
        let pending = std::mem::take(&mut self.pending);
        unacked.into_iter().chain(pending).map(|o| o.env).collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::envelope::Meta;
    use crate::jid::Jid;
    use crate::transport::frame::PayloadKind;

    fn env(id: u32) -> Envelope {
        let mut meta = Meta::new(Arc::from("dc1"), 4);
        meta.message_id = u128::from(id);
        Envelope::new(
            Jid::parse("a@x/r").unwrap(),
            Jid::parse("b@x/r").unwrap(),
            PayloadKind::Message,
            bytes::Bytes::new(),
            meta,
        )
    }

    fn id(e: &Envelope) -> u32 {
        e.meta.message_id as u32
    }

    /// The writer's side: takes up to `n`, "encodes" all, files them.
    fn write(q: &mut ConnQueue, n: usize) -> Vec<(u32, u64)> {
        let mut batch = q.take_batch(n, |_| 1);
        let mut out = Vec::new();
        for o in std::mem::take(&mut batch.items) {
            out.push((id(&o.env), batch.seq_of(&o)));
            batch.written(o);
        }
        q.file(batch);
        out
    }

    #[tokio::test]
    async fn a_reconnection_resends_what_the_receiver_lacks_with_its_numbers() {
        let mut q = ConnQueue::default();
        for i in 0..4 {
            q.push(env(i)).unwrap();
        }
        assert_eq!(write(&mut q, 3), [(0, 1), (1, 2), (2, 3)]);
        assert_eq!(q.resume(Some(1), &[]).0, 1);
        assert_eq!(write(&mut q, 10), [(1, 2), (2, 3), (3, 4)]);
        assert_eq!(q.acked(4), 3);
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_failed_connection_gives_back_the_unwritten_and_later_the_rest() {
        let mut q = ConnQueue::default();
        for i in 0..3 {
            q.push(env(i)).unwrap();
        }
        write(&mut q, 1);
        let fresh: Vec<u32> = q.fail().iter().map(id).collect();
        assert_eq!(fresh, [1, 2]);
        assert!(q.push(env(9)).is_err(), "refused while failing");
        assert!(q.should_give_up(Duration::ZERO));
        let rest = q.give_up(77, 5);
        assert_eq!(rest.len(), 1);
        assert_eq!(
            rest[0].prior.as_deref().copied(),
            Some(Prior {
                session: 77,
                seq: 1,
                token: 5
            })
        );
        q.resume(None, &[]);
        q.push(env(5)).unwrap();
        assert_eq!(write(&mut q, 1), [(5, 1)], "a new session numbers from 1");
    }

    #[tokio::test]
    async fn a_nack_acknowledges_what_precedes_and_removes_the_refused_one() {
        let mut q = ConnQueue::default();
        for i in 0..4 {
            q.push(env(i)).unwrap();
        }
        write(&mut q, 4);
        let (done, refused) = q.nacked(3);
        assert_eq!(done, 2);
        assert_eq!(refused.map(|e| id(&e)), Some(2));
        assert_eq!(q.nacked(3), (0, None), "a duplicate Nack changes nothing");
        assert_eq!(q.acked(4), 1);
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_resumed_answer_hands_over_the_refused_before_the_acknowledged() {
        let mut q = ConnQueue::default();
        for i in 0..4 {
            q.push(env(i)).unwrap();
        }
        write(&mut q, 4);
        // The receiver took 1 to 3 and refused 2; the Nack was lost.
        let (done, refused) = q.resume(Some(3), &[2, 9]);
        assert_eq!(done, 2);
        assert_eq!(refused.iter().map(id).collect::<Vec<_>>(), [1]);
        assert_eq!(write(&mut q, 4), [(3, 4)]);
    }

    #[tokio::test]
    async fn reconnections_do_not_reset_the_clocks_and_progress_does() {
        let step = Duration::from_millis(60);
        let mut q = ConnQueue::default();
        q.push(env(0)).unwrap();
        q.push(env(1)).unwrap();
        write(&mut q, 2);
        std::thread::sleep(step);
        assert!(q.ack_overdue(step));
        q.fail();
        std::thread::sleep(step);
        q.resume(None, &[]);
        write(&mut q, 2);
        q.fail();
        assert!(q.ack_overdue(step * 2), "waiting since the first write");
        assert!(q.should_give_up(step), "failing since the first failure");
        let before = Instant::now();
        assert_eq!(q.acked(1), 1);
        assert!(q.waiting_since().is_some_and(|t| t >= before), "restarted");
        assert!(
            !q.should_give_up(Duration::ZERO),
            "progress: the link works"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push,
        Write(usize),
        /// Acknowledge up to the k-th written stanza still waiting.
        Ack(usize),
        /// Reconnect; the receiver had the first k waiting ones.
        Resume(usize),
        Fail,
        GiveUp,
        TakeAll,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Push),
            3 => (1usize..5).prop_map(Op::Write),
            2 => (0usize..5).prop_map(Op::Ack),
            1 => (0usize..5).prop_map(Op::Resume),
            1 => Just(Op::Fail),
            1 => Just(Op::GiveUp),
            1 => Just(Op::TakeAll),
        ]
    }

    /// The model: live stanzas in push order, each with its number (once
    /// written) and whether it was written on the current link.
    #[derive(Default)]
    struct Model {
        live: Vec<(u32, Option<u64>, bool)>,
        next_seq: u64,
        failed: bool,
        session: u64,
    }

    impl Model {
        fn written_seqs(&self) -> Vec<u64> {
            self.live
                .iter()
                .filter(|s| s.2)
                .filter_map(|s| s.1)
                .collect()
        }
    }

    proptest! {
        #[test]
        fn the_queue_behaves_as_its_model(ops in proptest::collection::vec(op(), 1..80)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            let _guard = rt.enter();
            let mut q = ConnQueue::default();
            let mut m = Model { next_seq: 1, ..Model::default() };
            let mut next_id = 0u32;
            let mut done: Vec<u32> = Vec::new();
            for op in ops {
                match op {
                    Op::Push => {
                        let r = q.push(env(next_id));
                        prop_assert_eq!(r.is_ok(), !m.failed);
                        if m.failed {
                            done.push(next_id);
                        } else {
                            m.live.push((next_id, None, false));
                        }
                        next_id += 1;
                    }
                    Op::Write(n) => {
                        if m.failed {
                            // The task does not write while failing; the
                            // queue holds only unacked stanzas then.
                            continue;
                        }
                        let got = write(&mut q, n);
                        let mut want = Vec::new();
                        for s in m.live.iter_mut().filter(|s| !s.2).take(n) {
                            let seq = *s.1.get_or_insert_with(|| {
                                m.next_seq += 1;
                                m.next_seq - 1
                            });
                            s.2 = true;
                            want.push((s.0, seq));
                        }
                        prop_assert_eq!(got, want);
                    }
                    Op::Ack(k) => {
                        let seqs = m.written_seqs();
                        let Some(&upto) = seqs.get(k) else { continue };
                        let n = q.acked(upto);
                        let (gone, kept): (Vec<_>, Vec<_>) = m
                            .live
                            .drain(..)
                            .partition(|s| s.2 && s.1.is_some_and(|x| x <= upto));
                        m.live = kept;
                        prop_assert_eq!(n, gone.len());
                        done.extend(gone.iter().map(|s| s.0));
                    }
                    Op::Resume(k) => {
                        let seqs = m.written_seqs();
                        let received = if m.failed { None } else { seqs.get(k).copied() };
                        let (n, _) = q.resume(received, &[]);
                        let r = received.unwrap_or(0);
                        let (gone, kept): (Vec<_>, Vec<_>) = m
                            .live
                            .drain(..)
                            .partition(|s| s.2 && s.1.is_some_and(|x| x <= r));
                        m.live = kept;
                        prop_assert_eq!(n, gone.len());
                        done.extend(gone.iter().map(|s| s.0));
                        for s in &mut m.live {
                            s.2 = false;
                        }
                        m.failed = false;
                    }
                    Op::Fail => {
                        let fresh: Vec<u32> = q.fail().iter().map(id).collect();
                        let want: Vec<u32> =
                            m.live.iter().filter(|s| s.1.is_none()).map(|s| s.0).collect();
                        m.live.retain(|s| s.1.is_some());
                        for s in &mut m.live {
                            s.2 = false;
                        }
                        m.failed = true;
                        prop_assert_eq!(&fresh, &want);
                        done.extend(fresh);
                    }
                    Op::GiveUp => {
                        let due = q.should_give_up(Duration::ZERO);
                        prop_assert_eq!(due, m.failed && !m.live.is_empty());
                        if due {
                            m.session += 1;
                            let back = q.give_up(m.session, 0);
                            let got: Vec<(u32, Option<(u64, u64)>)> = back
                                .iter()
                                .map(|e| (id(e), e.prior.as_ref().map(|p| (p.session, p.seq))))
                                .collect();
                            let want: Vec<(u32, Option<(u64, u64)>)> = m
                                .live
                                .drain(..)
                                .map(|s| (s.0, s.1.map(|seq| (m.session, seq))))
                                .collect();
                            prop_assert_eq!(got, want);
                            m.next_seq = 1;
                            done.extend(back.iter().map(id));
                        }
                    }
                    Op::TakeAll => {
                        let all: Vec<u32> = q.take_all().iter().map(id).collect();
                        let want: Vec<u32> = m.live.drain(..).map(|s| s.0).collect();
                        prop_assert_eq!(&all, &want);
                        done.extend(all);
                    }
                }
                prop_assert_eq!(q.is_empty(), m.live.is_empty());
                prop_assert_eq!(q.is_failed(), m.failed);
            }
            // Nothing lost, nothing twice: every stanza pushed is live,
            // acknowledged or handed back, exactly once.
            let mut seen: Vec<u32> = done.into_iter().chain(m.live.iter().map(|s| s.0)).collect();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..next_id).collect::<Vec<u32>>());
        }
    }
}
