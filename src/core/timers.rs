//! A hierarchical timer wheel for heartbeat and lease deadlines: O(1) to arm, move and cancel,
//! and expiry work proportional to the slots crossed and the timers that fire, never to the
//! number of timers armed.
//!
//! Architecture invariant: time only comes in as `now` (the wheel never reads a clock) and only
//! moves forward; the same operations give the same expirations in the same order.
//!
//! Layout: `LEVELS` levels of 64 slots; level `l` slots span 64^l ms, so level 0 has 1 ms
//! resolution and seven levels cover 2^42 ms (about 139 years); later deadlines wait in an
//! overflow list. A timer sits at the level of the highest 6-bit digit in which its deadline
//! differs from the wheel's position (`elapsed`), so the lowest non-empty level always holds
//! the earliest timers; entries move down a level ("cascade") when `elapsed` reaches their slot.
//! Timers are nodes of intrusive doubly linked lists in a slab, so cancel and reset unlink in
//! O(1); a 64-bit occupancy mask per level finds the next non-empty slot with one instruction.

use slab::Slab;

use super::types::Millis;

const LEVELS: usize = 7;
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const NIL: usize = usize::MAX;

/// Where a timer is linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Already due (deadline at or before `elapsed`); fires on the next advance.
    Due,
    Slot {
        level: u8,
        slot: u8,
    },
    /// Beyond the wheel's range.
    Overflow,
}

struct Entry<T> {
    /// Tells this arming apart from any other that reuses the slab slot later.
    generation: u64,
    deadline: Millis,
    /// Arming order, for a deterministic tie-break among equal deadlines.
    sequence: u64,
    place: Place,
    prev: usize,
    next: usize,
    value: T,
}

/// A handle on an armed timer; it becomes stale once the timer fires or is cancelled, and a stale
/// handle never matches a later timer that reuses the slot.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TimerKey {
    slot: usize,
    generation: u64,
}

pub struct TimerWheel<T> {
    entries: Slab<Entry<T>>,
    slots: [[usize; SLOTS]; LEVELS],
    occupied: [u64; LEVELS],
    due: usize,
    overflow: usize,
    /// The wheel's position: every timer at or before it has fired or sits in `due`.
    elapsed: Millis,
    sequence_next: u64,
    /// Fired timers as (deadline, arming sequence, slot, generation, value), sorted by the first
    /// two before they are handed out.
    fired: Vec<(Millis, u64, usize, u64, T)>,
}

fn slot_span(level: usize) -> Millis {
    1 << (SLOT_BITS as usize * level)
}

impl<T> TimerWheel<T> {
    pub fn new(now: Millis) -> Self {
        TimerWheel {
            entries: Slab::new(),
            slots: [[NIL; SLOTS]; LEVELS],
            occupied: [0; LEVELS],
            due: NIL,
            overflow: NIL,
            elapsed: now,
            sequence_next: 0,
            fired: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Arms a timer; a deadline at or before the wheel's position fires on the next advance.
    pub fn insert(&mut self, deadline: Millis, value: T) -> TimerKey {
        let sequence = self.next_sequence();
        let entry = Entry {
            generation: sequence,
            deadline,
            sequence,
            place: Place::Due,
            prev: NIL,
            next: NIL,
            value,
        };
        let key = self.entries.insert(entry);
        self.link(key);
        TimerKey {
            slot: key,
            generation: sequence,
        }
    }

    /// True while `key`'s timer is armed (not fired, not cancelled).
    pub fn is_armed(&self, key: TimerKey) -> bool {
        self.entries
            .get(key.slot)
            .is_some_and(|e| e.generation == key.generation)
    }

    /// Moves an armed timer to a new deadline; it then ranks as armed last among equal deadlines.
    pub fn reset(&mut self, key: TimerKey, deadline: Millis) {
        assert!(self.is_armed(key), "reset of a timer that is not armed: {key:?}");
        self.unlink(key.slot);
        let sequence = self.next_sequence();
        let entry = &mut self.entries[key.slot];
        entry.deadline = deadline;
        entry.sequence = sequence;
        self.link(key.slot);
    }

    /// Disarms a timer and returns its value.
    pub fn cancel(&mut self, key: TimerKey) -> T {
        assert!(self.is_armed(key), "cancel of a timer that is not armed: {key:?}");
        self.unlink(key.slot);
        self.entries.remove(key.slot).value
    }

    pub fn deadline(&self, key: TimerKey) -> Millis {
        assert!(self.is_armed(key), "deadline of a timer that is not armed: {key:?}");
        self.entries[key.slot].deadline
    }

    pub fn get(&self, key: TimerKey) -> &T {
        assert!(self.is_armed(key), "value of a timer that is not armed: {key:?}");
        &self.entries[key.slot].value
    }

    /// A lower bound on the earliest deadline, never later than it: exact for timers due or
    /// within the current 64 ms, the start of their slot for timers further out (reading the
    /// exact one would mean walking a slot that may hold a million timers).
    pub fn next_deadline(&self) -> Option<Millis> {
        if self.due != NIL {
            return Some(self.elapsed);
        }
        if let Some((level, slot)) = self.next_slot() {
            return Some(self.slot_start(level, slot));
        }
        let mut earliest = None;
        let mut key = self.overflow;
        while key != NIL {
            let entry = &self.entries[key];
            earliest = Some(earliest.map_or(entry.deadline, |e: Millis| e.min(entry.deadline)));
            key = entry.next;
        }
        earliest
    }

    /// Fires every timer with a deadline at or before `now`, appending them to `expired` in
    /// (deadline, arming order) order; their keys become free.
    pub fn advance(&mut self, now: Millis, expired: &mut Vec<(TimerKey, T)>) {
        assert!(now >= self.elapsed, "time went backwards: {now} < {}", self.elapsed);
        self.fire_due();
        while let Some((level, slot)) = self.next_slot() {
            let start = self.slot_start(level, slot);
            if start > now {
                break;
            }
            self.elapsed = start;
            self.cascade(level, slot);
            self.fire_due();
        }
        self.elapsed = now;
        if self.overflow != NIL {
            self.reinsert_overflow();
            self.fire_due();
        }
        self.fired
            .sort_unstable_by_key(|&(deadline, sequence, _, _, _)| (deadline, sequence));
        expired.extend(
            self.fired
                .drain(..)
                .map(|(_, _, slot, generation, value)| (TimerKey { slot, generation }, value)),
        );
    }

    /// Full consistency check (the simulator calls it after every step); panics on a violation.
    pub fn check_invariants(&self) {
        let mut linked = 0;
        let mut walk = |head: usize, place: Place| {
            let mut prev = NIL;
            let mut key = head;
            while key != NIL {
                let entry = &self.entries[key];
                assert_eq!(entry.place, place, "timer {key} linked under the wrong place");
                assert_eq!(entry.prev, prev, "timer {key} has a broken back link");
                assert_eq!(
                    self.place_for(entry.deadline),
                    place,
                    "timer {key} is misplaced for its deadline"
                );
                linked += 1;
                prev = key;
                key = entry.next;
            }
        };
        walk(self.due, Place::Due);
        walk(self.overflow, Place::Overflow);
        for level in 0..LEVELS {
            for slot in 0..SLOTS {
                let head = self.slots[level][slot];
                let bit = self.occupied[level] >> slot & 1 == 1;
                assert_eq!(bit, head != NIL, "occupancy bit of level {level} slot {slot} is wrong");
                walk(
                    head,
                    Place::Slot {
                        level: level as u8,
                        slot: slot as u8,
                    },
                );
            }
        }
        assert_eq!(linked, self.entries.len(), "a timer is armed but not linked");
        assert!(self.fired.is_empty(), "fired timers left behind");
    }

    fn next_sequence(&mut self) -> u64 {
        self.sequence_next += 1;
        self.sequence_next
    }

    /// Where a deadline belongs relative to the wheel's position.
    fn place_for(&self, deadline: Millis) -> Place {
        if deadline <= self.elapsed {
            return Place::Due;
        }
        let differing = deadline ^ self.elapsed;
        let level = (63 - differing.leading_zeros()) as usize / SLOT_BITS as usize;
        if level >= LEVELS {
            return Place::Overflow;
        }
        let slot = (deadline >> (SLOT_BITS as usize * level)) as usize & (SLOTS - 1);
        Place::Slot {
            level: level as u8,
            slot: slot as u8,
        }
    }

    /// The lowest non-empty level's first occupied slot: it holds the earliest timers. Every
    /// occupied slot of a level lies ahead of the wheel's position in that level.
    fn next_slot(&self) -> Option<(usize, usize)> {
        let level = self.occupied.iter().position(|&mask| mask != 0)?;
        Some((level, self.occupied[level].trailing_zeros() as usize))
    }

    fn slot_start(&self, level: usize, slot: usize) -> Millis {
        let block = slot_span(level + 1);
        (self.elapsed & !(block - 1)) + slot as Millis * slot_span(level)
    }

    fn head_mut(&mut self, place: Place) -> &mut usize {
        match place {
            Place::Due => &mut self.due,
            Place::Overflow => &mut self.overflow,
            Place::Slot { level, slot } => &mut self.slots[level as usize][slot as usize],
        }
    }

    fn link(&mut self, key: usize) {
        let place = self.place_for(self.entries[key].deadline);
        let head = *self.head_mut(place);
        if head != NIL {
            self.entries[head].prev = key;
        }
        let entry = &mut self.entries[key];
        entry.place = place;
        entry.prev = NIL;
        entry.next = head;
        *self.head_mut(place) = key;
        if let Place::Slot { level, slot } = place {
            self.occupied[level as usize] |= 1 << slot;
        }
    }

    fn unlink(&mut self, key: usize) {
        let (place, prev, next) = {
            let entry = &self.entries[key];
            (entry.place, entry.prev, entry.next)
        };
        if prev == NIL {
            debug_assert_eq!(*self.head_mut(place), key);
            *self.head_mut(place) = next;
        } else {
            self.entries[prev].next = next;
        }
        if next != NIL {
            self.entries[next].prev = prev;
        }
        if let Place::Slot { level, slot } = place
            && self.slots[level as usize][slot as usize] == NIL
        {
            self.occupied[level as usize] &= !(1 << slot);
        }
    }

    /// Detaches a whole list and returns its first key; the nodes keep their `next` links.
    fn take_list(&mut self, place: Place) -> usize {
        let head = std::mem::replace(self.head_mut(place), NIL);
        if let Place::Slot { level, slot } = place {
            self.occupied[level as usize] &= !(1 << slot);
        }
        head
    }

    /// Re-files every timer of a slot the wheel's position just reached, one level down or due.
    fn cascade(&mut self, level: usize, slot: usize) {
        let mut key = self.take_list(Place::Slot {
            level: level as u8,
            slot: slot as u8,
        });
        while key != NIL {
            let next = self.entries[key].next;
            self.link(key);
            key = next;
        }
    }

    fn fire_due(&mut self) {
        let mut key = self.take_list(Place::Due);
        while key != NIL {
            let entry = self.entries.remove(key);
            self.fired
                .push((entry.deadline, entry.sequence, key, entry.generation, entry.value));
            key = entry.next;
        }
    }

    fn reinsert_overflow(&mut self) {
        let mut key = self.take_list(Place::Overflow);
        while key != NIL {
            let next = self.entries[key].next;
            self.link(key);
            key = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn fire(wheel: &mut TimerWheel<u32>, now: Millis) -> Vec<u32> {
        let mut out = Vec::new();
        wheel.advance(now, &mut out);
        wheel.check_invariants();
        out.into_iter().map(|(_, v)| v).collect()
    }

    #[test]
    fn fires_exactly_at_the_deadline_and_not_a_millisecond_before() {
        for delay in [1, 63, 64, 65, 4095, 4096, 300_000, 86_400_000] {
            let mut wheel = TimerWheel::new(1_000_000);
            wheel.insert(1_000_000 + delay, 7);
            assert!(
                fire(&mut wheel, 1_000_000 + delay - 1).is_empty(),
                "fired early for delay {delay}"
            );
            assert!(wheel.next_deadline().is_some_and(|d| d <= 1_000_000 + delay));
            assert_eq!(fire(&mut wheel, 1_000_000 + delay), [7], "delay {delay}");
            assert!(wheel.is_empty());
        }
    }

    #[test]
    fn reset_moves_a_timer_earlier_or_later() {
        let mut wheel = TimerWheel::new(0);
        let a = wheel.insert(10_000, 1);
        let b = wheel.insert(10, 2);
        wheel.reset(a, 5);
        wheel.reset(b, 20_000);
        assert_eq!(fire(&mut wheel, 5), [1]);
        assert!(fire(&mut wheel, 19_999).is_empty());
        assert_eq!(fire(&mut wheel, 20_000), [2]);
    }

    #[test]
    fn cancel_prevents_firing_and_returns_the_value() {
        let mut wheel = TimerWheel::new(0);
        let a = wheel.insert(100, 1);
        wheel.insert(100, 2);
        assert_eq!(wheel.cancel(a), 1);
        assert_eq!(fire(&mut wheel, 1000), [2]);
    }

    #[test]
    fn past_deadlines_fire_on_the_next_advance() {
        let mut wheel = TimerWheel::new(500);
        wheel.insert(100, 1);
        wheel.insert(500, 2);
        assert_eq!(wheel.next_deadline(), Some(500));
        assert_eq!(fire(&mut wheel, 500), [1, 2]);
    }

    #[test]
    fn equal_deadlines_fire_in_arming_order() {
        let mut wheel = TimerWheel::new(0);
        for v in 0..100 {
            wheel.insert(5_000, v);
        }
        assert_eq!(fire(&mut wheel, 5_000), (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn a_ten_day_jump_fires_everything_in_deadline_order() {
        let mut wheel = TimerWheel::new(0);
        let deadlines = [86_400_000 * 9, 3, 70_000, 3_600_000, 64, 86_400_000];
        for (v, d) in deadlines.iter().enumerate() {
            wheel.insert(*d, v as u32);
        }
        assert_eq!(fire(&mut wheel, 86_400_000 * 10), [1, 4, 2, 3, 5, 0]);
    }

    #[test]
    fn keys_are_reused_safely_after_expiry() {
        let mut wheel = TimerWheel::new(0);
        let a = wheel.insert(1, 1);
        assert_eq!(fire(&mut wheel, 1), [1]);
        let b = wheel.insert(2, 2);
        assert_eq!(wheel.get(b), &2);
        assert_eq!(wheel.deadline(b), 2);
        let _ = a;
        assert_eq!(fire(&mut wheel, 2), [2]);
    }

    #[test]
    fn deadlines_beyond_the_wheel_wait_in_overflow_and_still_fire() {
        let mut wheel = TimerWheel::new(0);
        let far = 1 << 45;
        wheel.insert(far, 1);
        wheel.insert(10, 2);
        assert_eq!(fire(&mut wheel, 10), [2]);
        assert_eq!(wheel.next_deadline(), Some(far));
        assert!(fire(&mut wheel, far - 1).is_empty());
        assert_eq!(fire(&mut wheel, far), [1]);
    }

    #[test]
    fn two_hundred_thousand_timers_expire_at_one_instant() {
        let mut wheel = TimerWheel::new(0);
        for v in 0..200_000u32 {
            wheel.insert(60_000 + u64::from(v % 7), v);
        }
        let mut out = Vec::new();
        wheel.advance(60_006, &mut out);
        assert_eq!(out.len(), 200_000);
        assert!(wheel.is_empty());
        wheel.check_invariants();
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(Millis),
        Reset(usize, Millis),
        Cancel(usize),
        Advance(Millis),
    }

    fn op() -> impl Strategy<Value = Op> {
        let delay = prop_oneof![0..100u64, 0..10_000u64, 0..100_000_000u64];
        prop_oneof![
            4 => delay.clone().prop_map(Op::Insert),
            2 => (any::<usize>(), delay.clone()).prop_map(|(i, d)| Op::Reset(i, d)),
            1 => any::<usize>().prop_map(Op::Cancel),
            3 => delay.prop_map(Op::Advance),
        ]
    }

    proptest! {
        #[test]
        fn matches_a_sorted_map_reference(ops in proptest::collection::vec(op(), 1..200)) {
            let mut now = 1_000u64;
            let mut wheel = TimerWheel::new(now);
            // Reference: (deadline, arming order) -> value; and the live keys by value.
            let mut reference: BTreeMap<(Millis, u64), u32> = BTreeMap::new();
            let mut live: Vec<(u32, TimerKey, Millis, u64)> = Vec::new();
            let mut armed = 0u64;
            let mut value = 0u32;
            for op in ops {
                match op {
                    Op::Insert(delay) => {
                        armed += 1;
                        value += 1;
                        let key = wheel.insert(now + delay, value);
                        reference.insert((now + delay, armed), value);
                        live.push((value, key, now + delay, armed));
                    }
                    Op::Reset(i, delay) if !live.is_empty() => {
                        let slot = i % live.len();
                        let (v, key, deadline, order) = live[slot];
                        armed += 1;
                        reference.remove(&(deadline, order));
                        reference.insert((now + delay, armed), v);
                        wheel.reset(key, now + delay);
                        live[slot] = (v, key, now + delay, armed);
                    }
                    Op::Cancel(i) if !live.is_empty() => {
                        let (v, key, deadline, order) = live.swap_remove(i % live.len());
                        reference.remove(&(deadline, order));
                        prop_assert_eq!(wheel.cancel(key), v);
                    }
                    Op::Advance(by) => {
                        now += by;
                        let fired = fire(&mut wheel, now);
                        let due: Vec<(Millis, u64)> = reference.range(..(now + 1, 0)).map(|(k, _)| *k).collect();
                        let expected: Vec<u32> = due.iter().map(|k| reference.remove(k).unwrap()).collect();
                        live.retain(|(v, ..)| !expected.contains(v));
                        prop_assert_eq!(fired, expected);
                    }
                    _ => {}
                }
                wheel.check_invariants();
                prop_assert_eq!(wheel.len(), reference.len());
                if let Some((&(earliest, _), _)) = reference.iter().next() {
                    let bound = wheel.next_deadline();
                    prop_assert!(bound.is_some_and(|b| b <= earliest.max(now)), "{:?} > {}", bound, earliest);
                } else {
                    prop_assert_eq!(wheel.next_deadline(), None);
                }
            }
        }
    }
}
