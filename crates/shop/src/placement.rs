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
//! random among those the instance does not hold yet. Instances can meet on a shard; two
//! writers of one shard conflict on nearly every commit, so after [`MOVE_AFTER_CONFLICTS`]
//! commits refused in a row the instance gives that shard up for another one at random. An
//! order sells from one shard of the set, handed out in turn; when the set changes, orders
//! still queued pick again (the guard moves them to their new lane). None of these choices
//! matter for correctness: stock in any shard is part of the item's total and is sold by
//! whoever holds that shard, or gathered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Conflicts among the last [`MOVE_WINDOW`] commits on one shard after which an instance gives
/// it up for another. Not "in a row": under a write budget two instances sharing a shard
/// take turns, one refused commit and one that goes through, which is just as costly.
pub const MOVE_AFTER_CONFLICTS: u32 = 3;

/// Commits on a shard that [`MOVE_AFTER_CONFLICTS`] counts over.
pub const MOVE_WINDOW: u32 = 6;

/// Items planned at most; past this many the plans start again empty (items go back to their
/// main document until they show demand again), which keeps memory bounded and is always
/// correct.
pub const MAX_SPREAD_ITEMS: usize = 100_000;

/// One item's shards on this instance.
#[derive(Debug, Default)]
struct Plan {
    /// The shards it is sold from, in the order they were taken.
    shards: Vec<u32>,
    /// The last [`MOVE_WINDOW`] commits on each of `shards`, one bit each (1: refused).
    conflicts: Vec<u32>,
    /// Bumped whenever `shards` changes, so orders holding an older pick choose again.
    epoch: u32,
    /// Whose turn is next.
    next: usize,
}

impl Plan {
    fn new(first: u32) -> Self {
        Self {
            shards: vec![first],
            conflicts: vec![0],
            epoch: 1,
            next: 0,
        }
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
    plans: Mutex<HashMap<String, Plan>>,
}

/// A pick: the plan's epoch and the shard.
pub type Pick = (u32, u32);

impl Placement {
    /// Items start on their main document; the first shard an item takes is `k` (mod K).
    pub fn new(k: u32) -> Self {
        Self(Arc::new(State {
            base: k,
            ..State::default()
        }))
    }

    /// Sell every item from shards from its first order, without waiting for a sign of
    /// demand: for tests of the shard rules, and for an instance that knows it is one of many.
    pub fn spreading_every_item(self) -> Self {
        Self(Arc::new(State {
            base: self.0.base,
            spread_all: true,
            plans: Mutex::new(HashMap::new()),
        }))
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

    /// The shard an order for `item` sells from, among `k`: `held` while it is still in the
    /// plan's current set, else the next in turn; `None`: the main document.
    pub fn pick(&self, item: &str, k: u32, held: Option<Pick>) -> Option<Pick> {
        if k == 0 {
            return None;
        }
        let mut plans = self.plans();
        let plan = self.plan(&mut plans, item, k)?;
        if let Some((epoch, shard)) = held {
            if epoch == plan.epoch {
                return Some((epoch, shard));
            }
        }
        let shard = plan.shards[plan.next % plan.shards.len()];
        plan.next = plan.next.wrapping_add(1);
        Some((plan.epoch, shard))
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
    /// grew.
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
            plan.conflicts.push(0);
            grew = true;
        }
        if !grew {
            return None;
        }
        plan.epoch = plan.epoch.wrapping_add(1);
        Some(plan.shards.clone())
    }

    /// A commit that wrote `item`'s shard `shard` went through, or was refused by another
    /// writer (`conflict`). Returns the shard it moved to when this conflict made the
    /// instance give `shard` up. Reports about a shard no longer held are ignored.
    pub fn observe(&self, item: &str, k: u32, shard: u32, conflict: bool) -> Option<u32> {
        if k < 2 {
            return None;
        }
        let mut plans = self.plans();
        let plan = self.plan(&mut plans, item, k)?;
        let i = plan.shards.iter().position(|s| *s == shard)?;
        let window = (1u32 << MOVE_WINDOW) - 1;
        plan.conflicts[i] = ((plan.conflicts[i] << 1) | u32::from(conflict)) & window;
        if !conflict || plan.conflicts[i].count_ones() < MOVE_AFTER_CONFLICTS {
            return None;
        }
        let to = plan.unused(k)?;
        plan.shards[i] = to;
        plan.conflicts[i] = 0;
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
        assert_eq!(p.pick("hot", 8, None), None);
        assert!(p.spread("hot", 8));
        assert!(!p.spread("hot", 8));
        // The first shard is the instance's own (5 mod 8).
        let first = p.pick("hot", 8, None).unwrap();
        assert_eq!(first.1, 5);
        assert_eq!(p.pick("hot", 8, Some(first)), Some(first));
        let set = p.grow("hot", 8, 3, 16).unwrap();
        assert_eq!(set.len(), 4);
        let distinct: std::collections::HashSet<_> = set.iter().collect();
        assert_eq!(distinct.len(), 4);
        // The set changed: an order holding an older pick chooses again, in turn.
        let picks: Vec<u32> = (0..8)
            .map(|_| p.pick("hot", 8, Some(first)).unwrap().1)
            .collect();
        for s in &set {
            assert_eq!(picks.iter().filter(|x| *x == s).count(), 2, "{picks:?}");
        }
        // Never more than `max`, nor more than K.
        assert_eq!(p.grow("hot", 8, 10, 6).unwrap().len(), 6);
        assert_eq!(p.grow("hot", 8, 10, 6), None);
        assert_eq!(p.grow("hot", 8, 10, 100).unwrap().len(), 8);
        assert_eq!(p.grow("hot", 8, 1, 100), None);
        assert!(!p.is_spread("cold"));
    }

    #[test]
    fn repeated_conflicts_on_a_shard_move_it_elsewhere() {
        let p = Placement::new(1);
        assert!(p.spread("hot", 4));
        // Two conflicts among the last six commits, however they fall: no move.
        for conflict in [true, false, true, false, false, false, false, true, false] {
            assert_eq!(p.observe("hot", 4, 1, conflict), None);
        }
        // Taking turns with another writer (a conflict every other commit): a third conflict
        // within six commits moves it.
        assert_eq!(p.observe("hot", 4, 1, false), None);
        assert_eq!(p.observe("hot", 4, 1, true), None);
        // Reports about a shard the item does not hold are ignored.
        assert_eq!(p.observe("hot", 4, 2, true), None);
        let to = p.observe("hot", 4, 1, true).unwrap();
        assert_ne!(to, 1);
        assert_eq!(p.shards_of("hot", 4), [to]);
        // Late reports about the shard it left change nothing.
        for _ in 0..MOVE_AFTER_CONFLICTS {
            assert_eq!(p.observe("hot", 4, 1, true), None);
        }
        // One shard (or none): nowhere to go.
        let one = Placement::new(0);
        one.spread("x", 1);
        for _ in 0..10 {
            assert_eq!(one.observe("x", 1, 0, true), None);
        }
    }

    #[test]
    fn every_item_spread_and_memory_bounded() {
        let all = Placement::new(3).spreading_every_item();
        assert!(all.is_spread("anything"));
        assert_eq!(all.pick("anything", 4, None).map(|p| p.1), Some(3));
        assert!(!all.spread("anything", 4));
        let p = Placement::new(0);
        for i in 0..MAX_SPREAD_ITEMS {
            p.spread(&format!("i{i}"), 4);
        }
        assert!(p.spread("one-more", 4));
        assert!(!p.is_spread("i0"));
    }
}
