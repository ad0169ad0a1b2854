//! Where this instance sells each item from: its main document, or a set of stock shards.
//!
//! **By demand.** An item is sold from its main document (`{items}/{id}`), exactly as
//! without shards, until this instance's commits on it say one document is not enough: a
//! commit refused by another writer (another instance sells it too), a commit held back by
//! the document's write budget (production Firestore sustains about one write a second per
//! document), or more orders waiting than one commit holds. From then on the item is sold
//! from this instance's own shards, and the set grows while its shards' commits still
//! overflow: enough shards that their commits, each at the budget, carry the demand. One
//! instance alone on the emulator (no budget, no conflicts) never leaves main.
//!
//! **Which shards.** The first is `hash(ONCE_INSTANCE_ID) mod K`, the next ones picked at
//! random among those the instance does not hold yet. The first is the set's *filler*: it
//! is refilled from main when short, and its lane moves stock from main into every shard
//! added later, in one commit (main sustains one write a second like any document, so
//! shards are never filled one commit each). An added shard is handed out only once that
//! commit went through. Instances can meet on a shard; two writers of one shard conflict on
//! most commits, so at the first refused commit that wrote nothing but the shard, the
//! instance gives it up for another one at random (its own lanes never write a shard at
//! once, so such a refusal means another instance holds it too; under a write budget each
//! refusal costs a second, so there is no waiting for a second one).
//!
//! An order sells from one ready shard of the set, handed out in turn, and keeps it while it
//! is in a batch; while it is still queued, a change of the set makes it pick again
//! (`Operation::replan`, and the guard moves it to its new lane). None of these choices
//! matter for correctness: stock in any shard is part of the item's total and is sold by
//! whoever holds that shard, or gathered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Items planned at most; past this many the plans start again empty (items go back to their
/// main document until they show demand again), which keeps memory bounded and is always
/// correct.
pub const MAX_SPREAD_ITEMS: usize = 100_000;

/// One item's shards on this instance.
#[derive(Debug, Default)]
struct Plan {
    /// The shards it is sold from, in the order they were taken; the first is the filler.
    shards: Vec<u32>,
    /// Whether each of `shards` holds stock and is handed out (the filler always is).
    ready: Vec<bool>,
    /// When this instance's last commit on each of `shards` went through.
    last: Vec<Option<Instant>>,
    /// Orders that picked each of `shards` since its last commit.
    assigned: Vec<u32>,
    /// Orders one commit holds (the guard's estimate from the last commit): how many a
    /// shard takes per commit.
    capacity: Option<u32>,
    /// Bumped whenever the shards handed out change, so queued orders choose again.
    epoch: u32,
    /// Whose turn is next.
    next: usize,
}

impl Plan {
    fn new(first: u32) -> Self {
        Self {
            shards: vec![first],
            ready: vec![true],
            last: vec![None],
            assigned: vec![0],
            capacity: None,
            epoch: 1,
            next: 0,
        }
    }

    /// The shards handed out: the filler and every ready one.
    fn handed_out(&self) -> impl Iterator<Item = u32> + '_ {
        self.shards
            .iter()
            .zip(&self.ready)
            .filter(|(_, r)| **r)
            .map(|(s, _)| *s)
    }

    /// A shard of `0..k` the plan does not hold, at random; `None` when it holds them all.
    fn unused(&self, k: u32) -> Option<u32> {
        let free = k.saturating_sub(self.shards.len() as u32);
        if free == 0 {
            return None;
        }
        let mut nth = fastrand::u32(..free);
        (0..k).find(|s| {
            if self.shards.contains(s) {
                return false;
            }
            if nth == 0 {
                return true;
            }
            nth -= 1;
            false
        })
    }
}

/// How this instance places stock, shared by every order it parses (clones share it).
#[derive(Clone, Default)]
pub struct Placement(Arc<State>);

#[derive(Default)]
struct State {
    /// The first shard an item takes (mod K).
    base: u32,
    /// Every item is spread from its first order (tests of the shard rules).
    spread_all: bool,
    /// Writes to an item's main document are scarce (a write budget): a refill from plenty
    /// fills every shard at once (see `ItemStock`).
    scarce_main: bool,
    plans: Mutex<HashMap<String, Plan>>,
}

/// A pick: the plan's epoch and the shard.
pub type Pick = (u32, u32);

impl Placement {
    /// Items start on their main document; the first shard an item takes is `k` (mod K).
    pub fn new(k: u32) -> Self {
        Self(Arc::new(State {
            base: k,
            scarce_main: true,
            ..State::default()
        }))
    }

    /// Sell every item from shards from its first order, without waiting for a sign of
    /// demand: for tests of the shard rules, and for an instance that knows it is one of many.
    pub fn spreading_every_item(self) -> Self {
        Self(Arc::new(State {
            base: self.0.base,
            spread_all: true,
            scarce_main: self.0.scarce_main,
            plans: Mutex::new(HashMap::new()),
        }))
    }

    /// Whether every write to an item's main document is scarce: under a write budget
    /// (production's one commit a second) a refill from plenty fills every shard at once, so
    /// the other instances find theirs filled and never write main for it. Without one (the
    /// emulator's terms) each instance refills its own shards only: filling every shard
    /// writes the shards other instances sell from, and each such write refuses one of their
    /// commits.
    pub fn with_scarce_main(self, scarce: bool) -> Self {
        Self(Arc::new(State {
            base: self.0.base,
            spread_all: self.0.spread_all,
            scarce_main: scarce,
            plans: Mutex::new(HashMap::new()),
        }))
    }

    /// See [`with_scarce_main`](Self::with_scarce_main).
    pub fn scarce_main(&self) -> bool {
        self.0.scarce_main
    }

    /// The first shard items take.
    pub fn shard(&self) -> u32 {
        self.0.base
    }

    fn plans(&self) -> std::sync::MutexGuard<'_, HashMap<String, Plan>> {
        self.0.plans.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The plan of `item`, made if every item is spread.
    fn plan<'a>(
        &self,
        plans: &'a mut HashMap<String, Plan>,
        item: &str,
        k: u32,
    ) -> Option<&'a mut Plan> {
        if self.0.spread_all && !plans.contains_key(item) {
            if plans.len() >= MAX_SPREAD_ITEMS {
                plans.clear();
            }
            plans.insert(item.to_owned(), Plan::new(self.0.base % k));
        }
        plans.get_mut(item)
    }

    /// Whether `item` is sold from shards here.
    pub fn is_spread(&self, item: &str) -> bool {
        self.0.spread_all || self.plans().contains_key(item)
    }

    /// The shard an order for `item` sells from, among `k`; `None`: the main document. It
    /// keeps `held` while that shard is still handed out, and, with `replan` (the order is
    /// still queued), while the set has not changed since; else it takes the next in turn.
    pub fn pick(&self, item: &str, k: u32, held: Option<Pick>, replan: bool) -> Option<Pick> {
        if k == 0 {
            return None;
        }
        let mut plans = self.plans();
        let plan = self.plan(&mut plans, item, k)?;
        if let Some((epoch, shard)) = held {
            let still = plan.handed_out().any(|s| s == shard);
            if still && (epoch == plan.epoch || !replan) {
                return Some((epoch, shard));
            }
            // Picking again: the shard it leaves has one order fewer coming.
            if let Some(i) = plan.shards.iter().position(|s| *s == shard) {
                plan.assigned[i] = plan.assigned[i].saturating_sub(1);
            }
        }
        let out: Vec<usize> = (0..plan.shards.len()).filter(|i| plan.ready[*i]).collect();
        // The next commit to leave with room: the shard whose last commit is oldest (its
        // budget comes back first; one never committed, at once), until it has as many
        // orders as a commit holds; in turn while that number is not known yet. Handing them
        // out in turn would keep every shard's commits in step with the others (clients that
        // send again at once would all wait a whole interval); the oldest first spreads the
        // commits over the second, so an order waits for the next one to leave.
        let next = plan.capacity.and_then(|cap| {
            out.iter()
                .copied()
                .filter(|i| plan.assigned[*i] < cap)
                .min_by_key(|i| plan.last[*i])
        });
        let i = next.unwrap_or_else(|| {
            plan.next = plan.next.wrapping_add(1);
            out[plan.next % out.len()]
        });
        plan.assigned[i] = plan.assigned[i].saturating_add(1);
        Some((plan.epoch, plan.shards[i]))
    }

    /// This instance's commit on `item`'s shard `shard` went through with `taken` orders, and
    /// one commit holds `capacity` of them.
    pub fn committed(&self, item: &str, k: u32, shard: u32, taken: usize, capacity: usize) {
        let mut plans = self.plans();
        let Some(plan) = self.plan(&mut plans, item, k) else {
            return;
        };
        let Some(i) = plan.shards.iter().position(|s| *s == shard) else {
            return;
        };
        let taken = u32::try_from(taken).unwrap_or(u32::MAX);
        plan.last[i] = Some(Instant::now());
        plan.assigned[i] = plan.assigned[i].saturating_sub(taken);
        if capacity > 0 {
            plan.capacity = Some(u32::try_from(capacity).unwrap_or(u32::MAX));
        }
    }

    /// The set's filler (its first shard) and the shards added but not filled yet, when
    /// `item` is spread.
    pub fn pending(&self, item: &str, k: u32) -> Option<(u32, Vec<u32>)> {
        if k == 0 {
            return None;
        }
        let mut plans = self.plans();
        let plan = self.plan(&mut plans, item, k)?;
        let pending = plan
            .shards
            .iter()
            .zip(&plan.ready)
            .filter(|(_, r)| !**r)
            .map(|(s, _)| *s)
            .collect();
        Some((plan.shards[0], pending))
    }

    /// A commit that filled these shards of `item` went through: hand them out.
    pub fn filled(&self, item: &str, k: u32, shards: &[u32]) {
        if shards.is_empty() {
            return;
        }
        let mut plans = self.plans();
        let Some(plan) = self.plan(&mut plans, item, k) else {
            return;
        };
        let mut changed = false;
        for (s, r) in plan.shards.iter().zip(plan.ready.iter_mut()) {
            if shards.contains(s) && !*r {
                *r = true;
                changed = true;
            }
        }
        if changed {
            plan.epoch = plan.epoch.wrapping_add(1);
        }
    }

    /// The shards `item` is sold from here (empty: its main document).
    pub fn shards_of(&self, item: &str, k: u32) -> Vec<u32> {
        if k == 0 {
            return Vec::new();
        }
        let mut plans = self.plans();
        self.plan(&mut plans, item, k)
            .map(|p| p.shards.clone())
            .unwrap_or_default()
    }

    /// Sell `item` from shards from now on, starting with one. True the first time (the
    /// caller logs it).
    pub fn spread(&self, item: &str, k: u32) -> bool {
        if k == 0 || self.0.spread_all {
            return false;
        }
        let mut plans = self.plans();
        if plans.contains_key(item) {
            return false;
        }
        if plans.len() >= MAX_SPREAD_ITEMS {
            plans.clear();
        }
        plans.insert(item.to_owned(), Plan::new(self.0.base % k));
        true
    }

    /// Add up to `by` shards to `item`'s set, keeping it at most `max`; the new set when it
    /// grew. They are handed out once filled.
    pub fn grow(&self, item: &str, k: u32, by: u32, max: u32) -> Option<Vec<u32>> {
        let mut plans = self.plans();
        let plan = self.plan(&mut plans, item, k)?;
        let mut grew = false;
        for _ in 0..by {
            if plan.shards.len() as u32 >= max.min(k) {
                break;
            }
            let Some(s) = plan.unused(k) else { break };
            plan.shards.push(s);
            plan.ready.push(false);
            plan.last.push(None);
            plan.assigned.push(0);
            grew = true;
        }
        // Handed out once the filler's lane has filled them (see [`Placement::filled`]).
        grew.then(|| plan.shards.clone())
    }

    /// A commit that wrote nothing but `item`'s shard `shard` was refused by another writer:
    /// give the shard up for another one at random, and return it. Reports about a shard no
    /// longer held are ignored.
    pub fn refused(&self, item: &str, k: u32, shard: u32) -> Option<u32> {
        if k < 2 {
            return None;
        }
        let mut plans = self.plans();
        let plan = self.plan(&mut plans, item, k)?;
        let i = plan.shards.iter().position(|s| *s == shard)?;
        let to = plan.unused(k)?;
        plan.shards[i] = to;
        // A moved filler refills itself when short; any other shard waits to be filled.
        plan.ready[i] = i == 0;
        plan.last[i] = None;
        plan.assigned[i] = 0;
        plan.epoch = plan.epoch.wrapping_add(1);
        Some(to)
    }
}

impl PartialEq for Placement {
    fn eq(&self, other: &Self) -> bool {
        self.shard() == other.shard() && self.0.spread_all == other.0.spread_all
    }
}

impl Eq for Placement {}

impl std::fmt::Debug for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Placement(first shard {})", self.shard())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_spreads_once_then_grows_and_hands_shards_out_in_turn() {
        let p = Placement::new(5);
        assert_eq!(p.pick("hot", 8, None, false), None);
        assert!(p.spread("hot", 8));
        assert!(!p.spread("hot", 8));
        // The first shard is the instance's own (5 mod 8), the filler.
        let first = p.pick("hot", 8, None, false).unwrap();
        assert_eq!(first.1, 5);
        assert_eq!(p.pick("hot", 8, Some(first), true), Some(first));
        let set = p.grow("hot", 8, 3, 16).unwrap();
        assert_eq!(set.len(), 4);
        let distinct: std::collections::HashSet<_> = set.iter().collect();
        assert_eq!(distinct.len(), 4);
        // Added shards are not handed out before the filler's lane filled them.
        let (filler, pending) = p.pending("hot", 8).unwrap();
        assert_eq!((filler, pending.len()), (5, 3));
        assert_eq!(p.pick("hot", 8, None, false).unwrap().1, 5);
        p.filled("hot", 8, &pending);
        assert!(p.pending("hot", 8).unwrap().1.is_empty());
        // An order in a batch keeps its shard; a queued one picks again, in turn.
        assert_eq!(p.pick("hot", 8, Some(first), false), Some(first));
        let picks: Vec<u32> = (0..8)
            .map(|_| p.pick("hot", 8, Some(first), true).unwrap().1)
            .collect();
        for s in &set {
            assert_eq!(picks.iter().filter(|x| *x == s).count(), 2, "{picks:?}");
        }
        // Once a commit told how many a shard takes, orders go to the shard whose
        // commit leaves next (the oldest last commit) until it has that many.
        for s in &set {
            p.committed("hot", 8, *s, 9, 0);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        for s in &set[1..] {
            p.committed("hot", 8, *s, 2, 2);
        }
        let next: Vec<u32> = (0..4)
            .map(|_| p.pick("hot", 8, None, false).unwrap().1)
            .collect();
        assert_eq!(&next[..2], [set[0], set[0]]);
        assert!(next[2..].iter().all(|s| *s != set[0]), "{next:?}");
        // Never more than `max`, nor more than K.
        assert_eq!(p.grow("hot", 8, 10, 6).unwrap().len(), 6);
        assert_eq!(p.grow("hot", 8, 10, 6), None);
        assert_eq!(p.grow("hot", 8, 10, 100).unwrap().len(), 8);
        assert_eq!(p.grow("hot", 8, 1, 100), None);
        assert!(!p.is_spread("cold"));
    }

    #[test]
    fn a_refused_shard_is_given_up_for_another() {
        let p = Placement::new(1);
        assert!(p.spread("hot", 4));
        // Reports about a shard the item does not hold are ignored.
        assert_eq!(p.refused("hot", 4, 2), None);
        let to = p.refused("hot", 4, 1).unwrap();
        assert_ne!(to, 1);
        assert_eq!(p.shards_of("hot", 4), [to]);
        // Late reports about the shard it left change nothing.
        assert_eq!(p.refused("hot", 4, 1), None);
        assert_eq!(p.shards_of("hot", 4), [to]);
        // An added shard moved is handed out again only once filled.
        p.grow("hot", 4, 1, 4);
        let (_, pending) = p.pending("hot", 4).unwrap();
        p.filled("hot", 4, &pending);
        let added = pending[0];
        let moved = p.refused("hot", 4, added).unwrap();
        assert_eq!(p.pending("hot", 4).unwrap().1, [moved]);
        // One shard (or none): nowhere to go.
        let one = Placement::new(0);
        one.spread("x", 1);
        assert_eq!(one.refused("x", 1, 0), None);
    }

    #[test]
    fn every_item_spread_and_memory_bounded() {
        let all = Placement::new(3).spreading_every_item();
        assert!(all.is_spread("anything"));
        assert_eq!(all.pick("anything", 4, None, false).map(|p| p.1), Some(3));
        assert!(!all.spread("anything", 4));
        let p = Placement::new(0);
        for i in 0..MAX_SPREAD_ITEMS {
            p.spread(&format!("i{i}"), 4);
        }
        assert!(p.spread("one-more", 4));
        assert!(!p.is_spread("i0"));
    }
}
