//! The sentence encoder behind Find's semantic ranking, on the network side: the model
//! (`encoder`: all-MiniLM-L6-v2 on the CPU), where it is looked for (`model_dir`), and the
//! worker threads that run it for registered cards and Find's queries (`workers`).
//!
//! Architecture invariant: nothing here runs on the core's thread or is reached from `core`; a
//! vector enters the core inside a command and is logged with it, so replay needs no model.

pub mod encoder;
pub mod model_dir;
pub mod workers;

pub use encoder::{EncodeError, SentenceEncoder};
pub use workers::Embedder;
