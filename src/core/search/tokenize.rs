//! Text to index terms, the same way for cards, queries and the related-terms table: lowercase,
//! fold Latin diacritics, split on anything not alphanumeric (and camelCase in tool names), drop
//! stop words, stem with Snowball English. Never depends on anything but its input.

use std::borrow::Cow;

use rust_stemmers::{Algorithm, Stemmer};

/// Words that say nothing about which agent is wanted.
const STOP_WORDS: &[&str] = &[
    "a",
    "about",
    "all",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "by",
    "can",
    "could",
    "do",
    "for",
    "from",
    "get",
    "has",
    "have",
    "help",
    "i",
    "in",
    "into",
    "is",
    "it",
    "its",
    "me",
    "my",
    "need",
    "needs",
    "of",
    "on",
    "or",
    "our",
    "please",
    "some",
    "someone",
    "something",
    "that",
    "the",
    "their",
    "them",
    "this",
    "to",
    "us",
    "want",
    "we",
    "which",
    "who",
    "will",
    "with",
    "would",
    "you",
    "your",
];

/// Tokens of free text. A word joined by `_`, `-` or `.` (a tool name like `http_client`) also
/// yields the whole word, unstemmed, so naming a tool exactly matches it exactly.
pub fn tokenize(text: &str) -> Vec<String> {
    let stemmer = Stemmer::create(Algorithm::English);
    let mut tokens = Vec::new();
    for word in text.split_whitespace() {
        let folded = fold(word);
        let parts: Vec<&str> = folded
            .split(|c: char| !c.is_alphanumeric())
            .filter(|p| !p.is_empty())
            .collect();
        for part in &parts {
            if part.chars().count() < 2 || STOP_WORDS.contains(part) {
                continue;
            }
            tokens.push(stem(&stemmer, part));
        }
        if parts.len() > 1 {
            let whole = folded.trim_matches(|c: char| !c.is_alphanumeric());
            if whole
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                tokens.push(whole.to_string());
            }
        }
    }
    tokens
}

/// Tokens of a tool or capability name: the name's own tokens plus its camelCase parts.
pub fn tokenize_tool(tool: &str) -> Vec<String> {
    let mut spaced = String::with_capacity(tool.len() + 8);
    let mut previous_lower = false;
    for c in tool.chars() {
        if c.is_uppercase() && previous_lower {
            spaced.push(' ');
        }
        previous_lower = c.is_lowercase() || c.is_ascii_digit();
        spaced.push(c);
    }
    let mut tokens = tokenize(tool);
    if spaced.len() != tool.len() {
        tokens.extend(tokenize(&spaced));
    }
    tokens
}

/// Snowball English for words of letters; a word with digits ("k8s", "s3") is an identifier and
/// stays as it is.
fn stem(stemmer: &Stemmer, word: &str) -> String {
    if word.chars().all(char::is_alphabetic) {
        stemmer.stem(word).into_owned()
    } else {
        word.to_string()
    }
}

/// Lowercase, with the diacritics of Latin letters folded away ("Résumé" → "resume", "ß" → "ss"),
/// so a query typed without accents finds a card written with them and the other way round.
fn fold(word: &str) -> Cow<'_, str> {
    if word.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
        return Cow::Borrowed(word);
    }
    let mut out = String::with_capacity(word.len());
    for c in word.chars().flat_map(char::to_lowercase) {
        match c {
            'à'..='å' | 'ā' | 'ă' | 'ą' => out.push('a'),
            'æ' => out.push_str("ae"),
            'ç' | 'ć' | 'č' => out.push('c'),
            'ď' | 'đ' => out.push('d'),
            'è'..='ë' | 'ē' | 'ė' | 'ę' | 'ě' => out.push('e'),
            'ì'..='ï' | 'ī' | 'į' | 'ı' => out.push('i'),
            'ł' | 'ľ' | 'ĺ' => out.push('l'),
            'ñ' | 'ń' | 'ň' => out.push('n'),
            'ò'..='ö' | 'ø' | 'ō' | 'ő' => out.push('o'),
            'œ' => out.push_str("oe"),
            'ř' | 'ŕ' => out.push('r'),
            'ś' | 'š' | 'ş' => out.push('s'),
            'ß' => out.push_str("ss"),
            'ť' | 'ţ' => out.push('t'),
            'ù'..='ü' | 'ū' | 'ů' | 'ű' | 'ų' => out.push('u'),
            'ý' | 'ÿ' => out.push('y'),
            'ź' | 'ż' | 'ž' => out.push('z'),
            other => out.push(other),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_lowercases_splits_stems_and_drops_stop_words() {
        assert_eq!(
            tokenize("Fetch the Web-Pages, please!"),
            ["fetch", "web", "page", "web-pages"]
        );
        assert_eq!(
            tokenize("parsing parsed parses parse"),
            ["pars", "pars", "pars", "pars"]
        );
        assert_eq!(tokenize("running runs"), ["run", "run"]);
        assert_eq!(tokenize("queries boxes classes"), ["queri", "box", "class"]);
        assert_eq!(tokenize("deployment deploys deploying"), ["deploy", "deploy", "deploy"]);
        assert_eq!(tokenize("http_client"), ["http", "client", "http_client"]);
        assert!(tokenize("a I to of").is_empty());
    }

    #[test]
    fn diacritics_and_case_fold_away() {
        assert_eq!(
            tokenize("Résumé ÜBERSETZER Straße"),
            tokenize("resume ubersetzer strasse")
        );
        assert_eq!(fold("naïve"), "naive");
    }

    #[test]
    fn words_with_digits_are_not_stemmed() {
        assert_eq!(tokenize("k8s s3 team43"), ["k8s", "s3", "team43"]);
    }

    #[test]
    fn tool_names_split_on_snake_and_camel_case() {
        assert_eq!(tokenize_tool("sqlRunner"), ["sqlrunner", "sql", "runner"]);
        assert_eq!(tokenize_tool("github_api"), ["github", "api", "github_api"]);
    }
}
