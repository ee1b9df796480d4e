//! Where the daemon looks for the sentence encoder's model: `--search-model DIR`, or else
//! `./models/`, `models/` beside the binary and `/usr/share/agentkeeper/models`, each holding
//! the model in `all-minilm-l6-v2/` (as `make models` installs it) or directly.
//!
//! Architecture invariant: finding a directory only looks at the file system; loading it is
//! `encoder`'s job.

use std::path::{Path, PathBuf};

use super::encoder::MODEL_FILES;

/// The model's directory name under a models directory.
pub const MODEL_NAME: &str = "all-minilm-l6-v2";
/// The system-wide models directory (the packages install the model there).
pub const SYSTEM_MODELS_DIR: &str = "/usr/share/agentkeeper/models";

/// True when `dir` holds every file the encoder reads.
pub fn holds_model(dir: &Path) -> bool {
    MODEL_FILES.iter().all(|file| dir.join(file).is_file())
}

/// The model directory within `dir`: `dir` itself, or its `all-minilm-l6-v2/`.
fn model_in(dir: &Path) -> Option<PathBuf> {
    [dir.to_path_buf(), dir.join(MODEL_NAME)]
        .into_iter()
        .find(|candidate| holds_model(candidate))
}

/// The directories looked in by default, in order: `./models`, `models` beside `exe`, the
/// system's.
pub fn default_places(exe: Option<&Path>) -> Vec<PathBuf> {
    let mut places = vec![PathBuf::from("models")];
    if let Some(beside) = exe.and_then(Path::parent) {
        places.push(beside.join("models"));
    }
    places.push(PathBuf::from(SYSTEM_MODELS_DIR));
    places
}

/// The model to load: in `flag`'s directory when given (an error naming it when it holds none),
/// else the first of `places` that holds one (`None`: rank lexically).
pub fn find(flag: Option<&Path>, places: &[PathBuf]) -> Result<Option<PathBuf>, String> {
    if let Some(dir) = flag {
        return model_in(dir).map(Some).ok_or_else(|| {
            format!(
                "--search-model {}: no model there ({} in it or in its {MODEL_NAME}/); `make models` installs one",
                dir.display(),
                MODEL_FILES.join(", ")
            )
        });
    }
    Ok(places.iter().find_map(|dir| model_in(dir)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_at(dir: &Path) {
        std::fs::create_dir_all(dir).expect("a temp dir");
        for file in MODEL_FILES {
            std::fs::write(dir.join(file), b"x").expect("a temp file");
        }
    }

    #[test]
    fn the_flag_names_the_model_or_an_error_says_what_is_missing() {
        let temp = tempfile::tempdir().expect("a temp dir");
        let empty = temp.path().join("empty");
        std::fs::create_dir_all(&empty).expect("a temp dir");
        let error = find(Some(&empty), &[]).expect_err("no model in an empty dir");
        assert!(
            error.contains("no model there") && error.contains("model.safetensors"),
            "{error}"
        );
        model_at(&temp.path().join("given").join(MODEL_NAME));
        let found = find(Some(&temp.path().join("given")), &[]).expect("a model");
        assert_eq!(found, Some(temp.path().join("given").join(MODEL_NAME)));
    }

    #[test]
    fn without_the_flag_the_first_place_that_holds_a_model_wins() {
        let temp = tempfile::tempdir().expect("a temp dir");
        let places = vec![temp.path().join("a"), temp.path().join("b"), temp.path().join("c")];
        assert_eq!(
            find(None, &places).expect("no error"),
            None,
            "nothing installed: lexical"
        );
        model_at(&places[2]);
        model_at(&places[1].join(MODEL_NAME));
        assert_eq!(find(None, &places).expect("no error"), Some(places[1].join(MODEL_NAME)));
    }

    #[test]
    fn the_default_places_are_the_working_dir_beside_the_binary_and_the_system() {
        let places = default_places(Some(Path::new("/opt/ak/bin/agentkeeper")));
        assert_eq!(
            places,
            [
                PathBuf::from("models"),
                PathBuf::from("/opt/ak/bin/models"),
                PathBuf::from(SYSTEM_MODELS_DIR)
            ]
        );
    }
}
