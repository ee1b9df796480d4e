//! A net thread's mailbox for the core's answers. The driver gathers a batch's unary answers
//! per net thread and posts them here together; a task on that thread hands them out, so the
//! calls wake from inside the thread, all of them before their HTTP/2 connection writes again,
//! and one write carries many responses. Answered one by one from the driver's thread
//! instead, each wake-up came from outside, the thread ran that call and its connection's
//! write in turn, and nearly every response cost a send(2) of its own. A batch with a single
//! answer for a thread sends it straight back: one hop fewer for a sequential caller.
//!
//! Architecture invariant: it carries answers only, never decides one; an answer the machine
//! must hear back about when its caller is gone (a claimed task) never comes here, and an
//! answer posted to a thread that has stopped is sent to its call directly.

use std::cell::RefCell;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use crossbeam_channel::{Receiver, Sender};
use futures_util::task::AtomicWaker;
use tokio::sync::oneshot;

use crate::core::Outcome;

type Posted = (oneshot::Sender<Outcome>, Outcome);

/// The driver's way to one net thread's waiting calls; cheap to clone.
#[derive(Clone)]
pub struct Mailbox {
    inner: Arc<Inner>,
}

struct Inner {
    /// A batch's answers for this thread travel together: one send, one receive.
    posted: Sender<Vec<Posted>>,
    /// The delivering task, woken once however many answers came since it last ran.
    waker: AtomicWaker,
}

thread_local! {
    /// This thread's mailbox, when a delivering task runs on it.
    static CURRENT: RefCell<Option<Mailbox>> = const { RefCell::new(None) };
}

impl Mailbox {
    /// The mailbox of the calling thread, if it has one (`install`).
    pub fn current() -> Option<Mailbox> {
        CURRENT.with(|current| current.borrow().clone())
    }

    /// Posts `answers` and wakes the delivering task once; if that thread has stopped, answers
    /// them directly.
    pub(super) fn post(&self, answers: Vec<Posted>) {
        if let Err(error) = self.inner.posted.send(answers) {
            for (reply, outcome) in error.into_inner() {
                let _ = reply.send(outcome);
            }
        }
        self.inner.waker.wake();
    }

    fn same(&self, other: &Mailbox) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

/// A batch's answers, gathered per net thread until `deliver`.
#[derive(Default)]
pub(super) struct Gathered {
    by_thread: Vec<(Mailbox, Vec<Posted>)>,
}

impl Gathered {
    pub(super) fn add(&mut self, mailbox: Mailbox, reply: oneshot::Sender<Outcome>, outcome: Outcome) {
        match self.by_thread.iter_mut().find(|(m, _)| m.same(&mailbox)) {
            Some((_, answers)) => answers.push((reply, outcome)),
            None => self.by_thread.push((mailbox, vec![(reply, outcome)])),
        }
    }

    /// Hands every gathered answer over: a thread's lone answer straight to its call, several
    /// through the thread's mailbox with one wake-up.
    pub(super) fn deliver(&mut self) {
        for (mailbox, mut answers) in self.by_thread.drain(..) {
            if answers.len() == 1 {
                let (reply, outcome) = answers.pop().expect("one answer");
                let _ = reply.send(outcome);
            } else {
                mailbox.post(answers);
            }
        }
    }
}

/// Gives the calling thread a mailbox; the returned future delivers its answers and must be
/// spawned on that same thread (a single-threaded runtime's local task), where it runs until
/// the runtime ends.
pub fn install() -> impl Future<Output = ()> {
    let (posted, answers) = crossbeam_channel::unbounded();
    let inner = Arc::new(Inner {
        posted,
        waker: AtomicWaker::new(),
    });
    CURRENT.with(|current| {
        *current.borrow_mut() = Some(Mailbox {
            inner: Arc::clone(&inner),
        })
    });
    deliver(inner, answers)
}

async fn deliver(inner: Arc<Inner>, answers: Receiver<Vec<Posted>>) {
    poll_fn(|cx| {
        // Registered before draining: an answer posted after the drain wakes the task again.
        inner.waker.register(cx.waker());
        for (reply, outcome) in answers.try_iter().flatten() {
            // A caller gone is no one's business here (see the invariant above).
            let _ = reply.send(outcome);
        }
        Poll::<()>::Pending
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Reply;

    #[test]
    fn answers_posted_from_another_thread_reach_their_calls_on_the_mailboxs_thread() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async {
            tokio::task::spawn_local(install());
            let mailbox = Mailbox::current().expect("installed on this thread");
            let (replies, answers): (Vec<_>, Vec<_>) = (0..3).map(|_| oneshot::channel()).unzip();
            let poster = std::thread::spawn(move || {
                let mut gathered = Gathered::default();
                for reply in replies {
                    gathered.add(mailbox.clone(), reply, Ok(Reply::Done));
                }
                gathered.deliver();
            });
            for answer in answers {
                assert!(matches!(answer.await, Ok(Ok(Reply::Done))));
            }
            poster.join().unwrap();
        });
        assert!(
            std::thread::spawn(|| Mailbox::current().is_none()).join().unwrap(),
            "other threads have none"
        );
    }

    #[test]
    fn answers_posted_after_the_delivering_thread_stopped_still_reach_their_calls() {
        let mailbox = std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async {
                tokio::task::spawn_local(install());
                tokio::task::yield_now().await;
            });
            drop(local);
            Mailbox::current().expect("installed")
        })
        .join()
        .unwrap();
        let (replies, mut answers): (Vec<_>, Vec<_>) = (0..2).map(|_| oneshot::channel()).unzip();
        mailbox.post(replies.into_iter().map(|reply| (reply, Ok(Reply::Done))).collect());
        for answer in &mut answers {
            assert!(matches!(answer.try_recv(), Ok(Ok(Reply::Done))), "answered directly");
        }
    }
}
