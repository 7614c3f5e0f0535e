//! The small closed vocabularies every stage shares: languages, labels, splits.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The five script languages the annotator knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Bash,
    Batch,
    Javascript,
    Powershell,
    Python,
}

impl Language {
    pub const ALL: [Language; 5] = [
        Language::Bash,
        Language::Batch,
        Language::Javascript,
        Language::Powershell,
        Language::Python,
    ];

    /// The name used in answers and in Parquet columns.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Bash => "bash",
            Language::Batch => "batch",
            Language::Javascript => "javascript",
            Language::Powershell => "powershell",
            Language::Python => "python",
        }
    }

    /// The short name of the published tables (sh, bat, js, ps, py).
    pub fn short(self) -> &'static str {
        match self {
            Language::Bash => "sh",
            Language::Batch => "bat",
            Language::Javascript => "js",
            Language::Powershell => "ps",
            Language::Python => "py",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Language {
    type Err = UnknownLanguage;

    /// Accepts the long names and the short table names, case-insensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bash" | "sh" | "shell" => Ok(Language::Bash),
            "batch" | "bat" | "cmd" => Ok(Language::Batch),
            "javascript" | "js" => Ok(Language::Javascript),
            "powershell" | "ps" | "ps1" => Ok(Language::Powershell),
            "python" | "py" => Ok(Language::Python),
            _ => Err(UnknownLanguage(s.to_string())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown language {0:?}: expected one of bash, batch, javascript, powershell, python")]
pub struct UnknownLanguage(pub String);

/// Verdict: 0 = benign, 1 = malicious, as in the published data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Label {
    Benign = 0,
    Malicious = 1,
}

impl Label {
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    pub fn from_u8(v: u8) -> Option<Label> {
        match v {
            0 => Some(Label::Benign),
            1 => Some(Label::Malicious),
            _ => None,
        }
    }
}

/// Which part of the dataset a script belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Seed,
    Test,
    Unlabelled,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Seed => "seed",
            Split::Test => "test",
            Split::Unlabelled => "unlabelled",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Hex sha256 of exact bytes: the identity of a script everywhere.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_round_trips_and_rejects_unknown() {
        for l in Language::ALL {
            assert_eq!(l.as_str().parse::<Language>().unwrap(), l);
            assert_eq!(l.short().parse::<Language>().unwrap(), l);
        }
        assert!("ruby".parse::<Language>().is_err());
    }

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
