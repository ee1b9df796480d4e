//! The sentence encoders behind Find's semantic ranking, on the network side: the built-in model
//! (`encoder`: all-MiniLM-L6-v2 on the CPU), where it is looked for (`model_dir`), an external
//! OpenAI-compatible embedder (`http`), which of them a vector comes from (`sources`), and the
//! worker threads that run them for registered cards and Find's queries (`workers`), and the
//! background pass that gives a vector to cards that lack one of the primary model (`backfill`).
//!
//! Architecture invariant: nothing here runs on the core's thread or is reached from `core`; a
//! vector enters the core inside a command and is logged with it, so replay needs no model.

mod backfill;
pub mod encoder;
pub mod http;
pub mod model_dir;
pub mod sources;
pub mod workers;

pub use encoder::{EncodeError, SentenceEncoder};
pub use sources::Sources;
pub use workers::Embedder;
