//! A hashed timer wheel holding the replies the simulated network has decided on until their
//! delay has passed. One slot per millisecond tick over a fixed horizon; a reply due beyond the
//! horizon waits in the last slot of the horizon and is put back when that slot comes round
//! (so a 5 s late reply is held exactly). Memory is bounded: past `capacity` held items,
//! [`TimerWheel::insert`] refuses and the caller counts the refusal.
//!
//! Written by hand: the wheel is a few dozen lines and must hold plain values with no
//! allocation per item beyond its slot vectors, which the timer crates (built around wakers
//! and tasks) do not offer.

/// Items due at millisecond ticks.
#[derive(Debug)]
pub struct TimerWheel<T> {
    slots: Vec<Vec<(u64, T)>>,
    /// The next tick not yet expired.
    current: u64,
    held: usize,
    capacity: usize,
}

impl<T> TimerWheel<T> {
    /// A wheel of `slots` milliseconds holding at most `capacity` items.
    pub fn new(slots: usize, capacity: usize) -> TimerWheel<T> {
        assert!(slots >= 2, "a wheel needs at least two slots");
        TimerWheel { slots: (0..slots).map(|_| Vec::new()).collect(), current: 0, held: 0, capacity }
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.held
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Holds `item` until tick `due` (a tick already past is due at the next expiry). Gives
    /// the item back when the wheel is full.
    pub fn insert(&mut self, due: u64, item: T) -> Result<(), T> {
        if self.held >= self.capacity {
            return Err(item);
        }
        self.place(due, item);
        self.held += 1;
        Ok(())
    }

    fn place(&mut self, due: u64, item: T) {
        let due = due.max(self.current);
        let horizon = self.slots.len() as u64 - 1;
        let slot_tick = due.min(self.current + horizon);
        let index = (slot_tick % self.slots.len() as u64) as usize;
        self.slots[index].push((due, item));
    }

    /// Calls `expire` for every item due at or before `now`, in tick order (items of one tick
    /// in the order they were inserted).
    pub fn expire(&mut self, now: u64, mut expire: impl FnMut(T)) {
        while self.current <= now && self.held > 0 {
            let index = (self.current % self.slots.len() as u64) as usize;
            let items = std::mem::take(&mut self.slots[index]);
            let mut kept = Vec::new();
            for (due, item) in items {
                if due <= self.current {
                    self.held -= 1;
                    expire(item);
                } else {
                    kept.push((due, item));
                }
            }
            self.current += 1;
            // Items parked at the horizon go back in at their real tick.
            for (due, item) in kept {
                self.place(due, item);
            }
        }
        if self.held == 0 {
            self.current = self.current.max(now + 1);
        }
    }

    /// The earliest tick at or before `limit` whose slot holds anything (items parked at the
    /// horizon count at their slot's tick), looking no further than `limit` so the cost is
    /// bounded.
    pub fn next_due_within(&self, limit: u64) -> Option<u64> {
        if self.held == 0 {
            return None;
        }
        let slots = self.slots.len() as u64;
        let last = limit.min(self.current + slots - 1);
        (self.current..=last).find(|tick| !self.slots[(tick % slots) as usize].is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_out_in_tick_order_and_insertion_order_within_a_tick() {
        let mut wheel = TimerWheel::new(64, 100);
        for (due, item) in [(5, "e"), (1, "a"), (3, "c"), (1, "b"), (3, "d"), (40, "f")] {
            wheel.insert(due, item).unwrap();
        }
        let mut out = Vec::new();
        wheel.expire(0, |item| out.push(item));
        assert!(out.is_empty());
        assert_eq!(wheel.next_due_within(100), Some(1));
        assert_eq!(wheel.next_due_within(0), None);
        wheel.expire(3, |item| out.push(item));
        assert_eq!(out, ["a", "b", "c", "d"]);
        wheel.expire(39, |item| out.push(item));
        assert_eq!(out, ["a", "b", "c", "d", "e"]);
        assert_eq!(wheel.len(), 1);
        wheel.expire(40, |item| out.push(item));
        assert_eq!(out.last(), Some(&"f"));
        assert!(wheel.is_empty());
    }

    #[test]
    fn items_beyond_the_horizon_wait_their_real_time() {
        let mut wheel = TimerWheel::new(16, 100);
        wheel.insert(100, 100u64).unwrap();
        wheel.insert(20, 20).unwrap();
        wheel.insert(7, 7).unwrap();
        let mut out = Vec::new();
        for now in 0..=120 {
            wheel.expire(now, |item| out.push((now, item)));
        }
        assert_eq!(out, [(7, 7), (20, 20), (100, 100)]);
    }

    #[test]
    fn a_full_wheel_refuses_and_a_late_insert_is_due_at_once() {
        let mut wheel = TimerWheel::new(8, 2);
        wheel.insert(3, 1).unwrap();
        wheel.insert(3, 2).unwrap();
        assert_eq!(wheel.insert(3, 3), Err(3));
        let mut out = Vec::new();
        wheel.expire(10, |item| out.push(item));
        assert_eq!(out, [1, 2]);
        // Due in the past: comes out at the next expiry.
        wheel.insert(2, 9).unwrap();
        wheel.expire(11, |item| out.push(item));
        assert_eq!(out, [1, 2, 9]);
    }
}
