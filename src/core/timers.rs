//! PLACEHOLDER (replaced by the real wheel).
use super::types::Millis;
use std::collections::BTreeMap;
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TimerKey(usize);
pub struct TimerWheel<T> {
    slots: slab::Slab<(Millis, u64, T)>,
    order: BTreeMap<(Millis, u64), usize>,
    seq: u64,
    now: Millis,
}
impl<T> TimerWheel<T> {
    pub fn new(now: Millis) -> Self {
        TimerWheel {
            slots: slab::Slab::new(),
            order: BTreeMap::new(),
            seq: 0,
            now,
        }
    }
    pub fn insert(&mut self, deadline: Millis, value: T) -> TimerKey {
        self.seq += 1;
        let k = self.slots.insert((deadline, self.seq, value));
        self.order.insert((deadline, self.seq), k);
        TimerKey(k)
    }
    pub fn reset(&mut self, key: TimerKey, deadline: Millis) {
        let e = &mut self.slots[key.0];
        self.order.remove(&(e.0, e.1));
        self.seq += 1;
        e.0 = deadline;
        e.1 = self.seq;
        self.order.insert((deadline, self.seq), key.0);
    }
    pub fn cancel(&mut self, key: TimerKey) -> T {
        let e = self.slots.remove(key.0);
        self.order.remove(&(e.0, e.1));
        e.2
    }
    pub fn deadline(&self, key: TimerKey) -> Millis {
        self.slots[key.0].0
    }
    pub fn get(&self, key: TimerKey) -> &T {
        &self.slots[key.0].2
    }
    pub fn next_deadline(&self) -> Option<Millis> {
        self.order.keys().next().map(|k| k.0)
    }
    pub fn advance(&mut self, now: Millis, expired: &mut Vec<(TimerKey, T)>) {
        assert!(now >= self.now);
        self.now = now;
        while let Some((&(d, s), &k)) = self.order.iter().next() {
            if d > now {
                break;
            }
            self.order.remove(&(d, s));
            expired.push((TimerKey(k), self.slots.remove(k).2));
        }
    }
    pub fn len(&self) -> usize {
        self.slots.len()
    }
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
    pub fn check_invariants(&self) {}
}
