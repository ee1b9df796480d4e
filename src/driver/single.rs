//! The engine of a single node: the core's machine, which orders its own writes, and the store
//! its entries go to (group commit: one write and one fdatasync per batch), if it has one.
//!
//! Architecture invariant: an entry is acknowledged to the machine (`Persisted`) only once the
//! store made it durable; what depends on it leaves only after that, as the machine decides.

use super::outlets::Outlets;
use super::{Durability, Engine};
use crate::core::Core;
use crate::core::machine::{Input, Machine, Output};
use crate::core::types::Millis;
use crate::metrics::Metrics;

pub(super) struct SingleNode {
    pub(super) machine: Machine,
    pub(super) store: Option<Durability>,
}

impl Engine for SingleNode {
    fn core(&self) -> &Core {
        self.machine.core()
    }

    fn deadline(&self) -> Option<Millis> {
        self.machine.poll_timeout()
    }

    fn handle(&mut self, now: Millis, input: Input) {
        self.machine.handle(now, input);
    }

    /// Does what the machine says until it waits for nothing: entries go into the batch's write,
    /// which is made durable (and acknowledged) when nothing else can leave before it.
    fn flush(&mut self, now: Millis, outlets: &mut Outlets, metrics: &Metrics) -> Result<(), String> {
        loop {
            match self.machine.poll() {
                Some(Output::Persist { index, entry }) => match &mut self.store {
                    Some(store) => store.add(index, &entry),
                    None => unreachable!("a machine without a log emits no entries"),
                },
                Some(output) => {
                    if let Some(input) = outlets.dispatch(output, metrics) {
                        self.machine.handle(now, input);
                    }
                }
                None => {
                    outlets.deliver();
                    let Some(store) = self.store.as_mut().filter(|store| store.has_pending()) else {
                        return Ok(());
                    };
                    let input = match store.commit(metrics) {
                        Ok(up_to) => Input::Persisted { up_to },
                        Err(reason) => Input::PersistFailed { reason },
                    };
                    self.machine.handle(now, input);
                }
            }
        }
    }

    fn after_batch(&mut self, metrics: &std::sync::Arc<Metrics>) {
        if let Some(store) = &mut self.store {
            store.snapshot_if_due(&self.machine, metrics);
        }
    }
}
