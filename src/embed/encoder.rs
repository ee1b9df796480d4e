//! all-MiniLM-L6-v2 (a 6-layer BERT, 384 dimensions) on the CPU with candle: a text's
//! WordPiece tokens (at most 256, as the model was trained) through the model, mean-pooled over
//! the attention mask and L2-normalised, as sentence-transformers computes it.
//!
//! Architecture invariant: loading reads only the model directory (no download); an encoder is
//! used by one worker thread at a time (`&self`, no interior state), and a failure is a typed
//! error, never a panic.

use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Tokenizer, TruncationParams};

/// Tokens the model reads of one text at most (sentence-transformers' `max_seq_length` for this
/// model): the rest of a long card is cut.
pub const TOKENS_MAX: usize = 256;
/// The files a model directory must hold.
pub const MODEL_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

pub struct SentenceEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    dims: usize,
    dir: PathBuf,
}

#[derive(Debug)]
pub enum EncodeError {
    /// The model directory lacks a file or holds one that does not read.
    Load(String),
    /// The tokenizer or the model failed on a text.
    Encode(String),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::Load(why) => write!(f, "cannot load the sentence encoder: {why}"),
            EncodeError::Encode(why) => write!(f, "the sentence encoder failed: {why}"),
        }
    }
}

impl std::error::Error for EncodeError {}

fn encode_error(error: impl fmt::Display) -> EncodeError {
    EncodeError::Encode(error.to_string())
}

impl SentenceEncoder {
    /// Loads the model in `dir` (config.json, tokenizer.json, model.safetensors).
    pub fn load(dir: &Path) -> Result<SentenceEncoder, EncodeError> {
        for file in MODEL_FILES {
            if !dir.join(file).is_file() {
                return Err(EncodeError::Load(format!("{} has no {file}", dir.display())));
            }
        }
        let load =
            |what: &str, error: &dyn fmt::Display| EncodeError::Load(format!("{}: {what}: {error}", dir.display()));
        let config = std::fs::read_to_string(dir.join("config.json")).map_err(|e| load("config.json", &e))?;
        let config: Config = serde_json::from_str(&config).map_err(|e| load("config.json", &e))?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| load("tokenizer.json", &e))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: TOKENS_MAX,
                ..TruncationParams::default()
            }))
            .map_err(|e| load("tokenizer.json", &e))?;
        tokenizer.with_padding(None);
        let device = Device::Cpu;
        // SAFETY (of the mapping): the weights file is ours, installed by `make models`, and not
        // written while the daemon runs.
        let weights =
            unsafe { VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &device) }
                .map_err(|e| load("model.safetensors", &e))?;
        let model = BertModel::load(weights, &config).map_err(|e| load("model.safetensors", &e))?;
        Ok(SentenceEncoder {
            model,
            tokenizer,
            dims: config.hidden_size,
            dir: dir.to_path_buf(),
        })
    }

    /// The vectors' length (384 for all-MiniLM-L6-v2).
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Where the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `text`'s sentence vector: unit length, `dims()` values.
    pub fn encode(&self, text: &str) -> Result<Vec<f32>, EncodeError> {
        let encoding = self.tokenizer.encode(text, true).map_err(encode_error)?;
        let ids = encoding.get_ids();
        assert!(
            ids.len() <= TOKENS_MAX,
            "the tokenizer truncates to {TOKENS_MAX} tokens"
        );
        let device = &self.model.device;
        let input_ids = Tensor::new(ids, device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(encode_error)?;
        let type_ids = input_ids.zeros_like().map_err(encode_error)?;
        let mask = Tensor::new(encoding.get_attention_mask(), device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(encode_error)?;
        let hidden = self
            .model
            .forward(&input_ids, &type_ids, Some(&mask))
            .map_err(encode_error)?;
        let pooled = mean_pool(&hidden, &mask).map_err(encode_error)?;
        let mut vector: Vec<f32> = pooled.to_vec1().map_err(encode_error)?;
        normalise(&mut vector);
        debug_assert_eq!(vector.len(), self.dims);
        Ok(vector)
    }
}

/// The mean of the token vectors (`[1, tokens, dims]`) the mask keeps (`[1, tokens]`): `[dims]`.
fn mean_pool(hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let kept = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
    summed.broadcast_div(&kept)?.squeeze(0)
}

/// Scales `vector` to unit length (a zero vector stays zero).
pub fn normalise(vector: &mut [f32]) {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The model `make models` installs in this worktree (the test command runs it first).
    fn installed() -> Option<SentenceEncoder> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join("all-minilm-l6-v2");
        if !dir.join("model.safetensors").is_file() {
            eprintln!(
                "SKIPPED: no model in {} (run `make models`; scripts/test.sh does)",
                dir.display()
            );
            return None;
        }
        Some(SentenceEncoder::load(&dir).expect("the installed model loads"))
    }

    fn cosine(a: &[f32], b: &[f32]) -> f64 {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
        let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        dot / (norm(a) * norm(b))
    }

    #[test]
    fn encodings_reproduce_the_reference_package_within_cosine_0_999() {
        let Some(encoder) = installed() else { return };
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/embed/reference.json"))
                .expect("the reference fixture is JSON");
        let references = fixture["references"].as_array().expect("a list of references");
        assert!(references.len() >= 3);
        for reference in references {
            let text = reference["text"].as_str().expect("a text");
            let expected: Vec<f32> = reference["vector"]
                .as_array()
                .expect("a vector")
                .iter()
                .map(|x| x.as_f64().expect("a number") as f32)
                .collect();
            let got = encoder.encode(text).expect("encodes");
            assert_eq!(got.len(), 384);
            assert_eq!(encoder.dims(), 384);
            let similarity = cosine(&got, &expected);
            assert!(similarity >= 0.999, "{text:?}: cosine {similarity:.5} to the reference");
            let length = got.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((length - 1.0).abs() < 1e-4, "unit length, got {length}");
        }
    }

    #[test]
    fn a_text_longer_than_the_model_reads_is_cut_not_refused() {
        let Some(encoder) = installed() else { return };
        let long = "review pull requests ".repeat(400);
        let vector = encoder.encode(&long).expect("a long text encodes");
        assert_eq!(vector.len(), 384);
        let short = encoder.encode("").expect("an empty text encodes");
        assert_eq!(short.len(), 384);
    }

    #[test]
    fn a_directory_without_the_model_is_a_load_error_naming_the_missing_file() {
        let temp = tempfile::tempdir().expect("a temp dir");
        let error = SentenceEncoder::load(temp.path()).err().expect("nothing to load");
        assert!(error.to_string().contains("config.json"), "{error}");
    }
}
