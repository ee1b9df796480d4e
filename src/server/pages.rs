//! Gathering one gRPC answer from several core commands: a page a client asks for (or a v1
//! client's whole list) may be bigger than the core answers in one command, so the handler
//! asks for slices, one command each, following the core's page tokens, until the page is full,
//! its encoded size reaches `PAGE_BYTES_MAX`, or the list ends. Other clients' calls run between
//! the slices: a big answer never holds the core.
//!
//! ListTasks is gathered the same way, but its bound is the core's own (input and output bytes,
//! which each slice is told how much is left of): its page tokens are creation ranks the
//! handler does not see, so only the core can cut a slice short.
//!
//! Architecture invariant: runs on a net thread and reads the core only through the driver's
//! queue; each slice is an ordinary read command, bounded like any other.

use prost::Message;

use crate::core::validate::PAGE_BYTES_MAX;
use crate::core::{Command, CoreError, Reply};
use crate::driver::CoreHandle;

/// Items asked of the core in one slice at most (the core caps its pages at this too).
pub const SLICE_MAX: usize = crate::core::listing::PAGE_SIZE_MAX;

/// One page gathered from slices: the items, and the token after the last one (empty when the
/// list ended with them).
pub struct Gathered<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
    /// Core commands it took.
    pub slices: usize,
}

/// How to ask the core for a slice, read its answer, and name an item for a page token.
pub trait Slices {
    type Item: Message;
    /// The command for up to `size` items after `page_token`.
    fn command(&self, size: u32, page_token: String) -> Command;
    /// The slice's items (as wire messages) and its next page token; `Err` for any other reply.
    fn split(&self, reply: Reply) -> Result<(Vec<Self::Item>, String), Reply>;
    /// The page token that goes on after `item` (its key).
    fn token_after(&self, item: &Self::Item) -> String;
}

/// Gathers up to `want` items from `page_token` on: at least one item when any is left, and no
/// more than `PAGE_BYTES_MAX` encoded bytes beyond the first.
pub async fn gather<S: Slices>(
    core: &CoreHandle,
    slices: &S,
    want: usize,
    page_token: String,
) -> Result<Result<Gathered<S::Item>, Reply>, CoreError> {
    assert!(want > 0, "a page holds at least one item");
    let mut gathered = Gathered {
        items: Vec::new(),
        next_page_token: page_token,
        slices: 0,
    };
    let mut bytes = 0;
    loop {
        let size = (want - gathered.items.len()).min(SLICE_MAX);
        let command = slices.command(size as u32, std::mem::take(&mut gathered.next_page_token));
        let reply = core.call(command).await?;
        gathered.slices += 1;
        let (items, next) = match slices.split(reply) {
            Ok(slice) => slice,
            Err(other) => return Ok(Err(other)),
        };
        for item in items {
            let size = item.encoded_len();
            if !gathered.items.is_empty() && bytes + size > PAGE_BYTES_MAX {
                let last = gathered.items.last().expect("not empty");
                gathered.next_page_token = slices.token_after(last);
                return Ok(Ok(gathered));
            }
            bytes += size;
            gathered.items.push(item);
        }
        gathered.next_page_token = next;
        if gathered.next_page_token.is_empty() || gathered.items.len() >= want {
            debug_assert!(gathered.items.len() <= want);
            return Ok(Ok(gathered));
        }
    }
}

/// How to ask the core for a slice of tasks and read its answer.
pub trait TaskSlicing {
    /// The command for up to `size` tasks from `page_token`: the page's first slice (`None`: a
    /// whole page's allowance) or a further one holding at most `bytes_left` bytes of input and
    /// output.
    fn command(&self, size: u32, page_token: String, bytes_left: Option<u64>) -> Command;
    /// The slice's tasks, their input and output bytes, and its next page token.
    fn split(&self, reply: Reply) -> Result<(Vec<crate::proto::Task>, usize, String), Reply>;
}

/// Gathers up to `want` tasks from `page_token` on, in slices of at most `SLICE_MAX`, within
/// `PAGE_BYTES_MAX` bytes of input and output past the first task: the page one ListTasks
/// command of that size would answer.
pub async fn gather_tasks<S: TaskSlicing>(
    core: &CoreHandle,
    slices: &S,
    want: usize,
    page_token: String,
) -> Result<Result<(Vec<crate::proto::Task>, String), Reply>, CoreError> {
    assert!(want > 0, "a page holds at least one task");
    let mut tasks = Vec::new();
    let mut token = page_token;
    let mut bytes_left = PAGE_BYTES_MAX;
    loop {
        let size = (want - tasks.len()).min(SLICE_MAX);
        let allowance = (!tasks.is_empty()).then_some(bytes_left as u64);
        let reply = core.call(slices.command(size as u32, token, allowance)).await?;
        let (slice, bytes, next) = match slices.split(reply) {
            Ok(slice) => slice,
            Err(other) => return Ok(Err(other)),
        };
        let got = slice.len();
        tasks.extend(slice);
        bytes_left = bytes_left.saturating_sub(bytes);
        token = next;
        // A slice cut short by bytes (or an empty one) ends the page where the core stopped.
        if token.is_empty() || tasks.len() >= want || got < size || bytes_left == 0 {
            debug_assert!(tasks.len() <= want);
            return Ok(Ok((tasks, token)));
        }
    }
}
