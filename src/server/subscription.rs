//! Opening an event subscription through the driver, shared by gRPC's Watch and WatchElection
//! and the dashboard's server-sent events.
//!
//! Architecture invariant: the sink is attached before any event can be routed to it, and the
//! core always hears when the reader is gone (the guard's drop), so no subscriber outlives it.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::core::events::SubscriberId;
use crate::core::machine::StreamEnd;
use crate::core::{Command, CoreError, ErrorCode, Event, Reply};
use crate::driver::{self, CoreHandle, Sink};

/// One open subscription: the core's first answer, the live events, the daemon's last word.
pub struct Subscription {
    pub reply: Reply,
    pub live: mpsc::Receiver<Arc<Event>>,
    pub end: oneshot::Receiver<StreamEnd>,
    pub guard: UnwatchGuard,
}

/// Sends `command` (Watch or WatchElection) with a sink of `buffer` events.
pub async fn open(core: &CoreHandle, buffer: usize, command: Command) -> Result<Subscription, CoreError> {
    let (events, live) = mpsc::channel(buffer);
    let (end, end_rx) = oneshot::channel();
    let (reply, answer) = oneshot::channel();
    core.send(driver::Request::Subscribe {
        command,
        sink: Sink { events, end },
        reply,
    })?;
    let reply = answer
        .await
        .unwrap_or_else(|_| Err(CoreError::new(ErrorCode::Unavailable, "the daemon is shutting down")))?;
    let subscriber = match &reply {
        Reply::Watching { subscriber, .. } | Reply::WatchingElection { subscriber, .. } => *subscriber,
        other => {
            debug_assert!(false, "a subscription answered with {other:?}");
            return Err(CoreError::new(
                ErrorCode::Unavailable,
                format!("the core answered a subscription with {other:?}"),
            ));
        }
    };
    Ok(Subscription {
        reply,
        live,
        end: end_rx,
        guard: UnwatchGuard {
            core: core.clone(),
            subscriber,
        },
    })
}

/// Tells the core a stream is gone when its reader hangs up (or the stream ends).
pub struct UnwatchGuard {
    core: CoreHandle,
    subscriber: SubscriberId,
}

impl Drop for UnwatchGuard {
    fn drop(&mut self) {
        let (reply, _) = oneshot::channel();
        // A full queue only delays the clean-up: the driver also drops a sink whose receiver is
        // gone at its next delivery.
        let _ = self.core.send(driver::Request::Call {
            command: Command::Unwatch {
                subscriber: self.subscriber,
            },
            principal: None,
            reply,
            mailbox: None,
        });
    }
}
