//! Text tokenizer for Llama-family models.
//!
//! Built on the `tokenizers` crate. From a GGUF file (`tokenizer.ggml.model
//! == "gpt2"`) a byte-level BPE is assembled from the stored vocabulary,
//! merges and token types, with the pre-tokenizer named by
//! `tokenizer.ggml.pre`; a Hugging Face `tokenizer.json` can be loaded as is.
//! Control tokens written in the text (e.g. `<|im_start|>`) encode to their
//! ids, as llama.cpp does with `parse_special = true`. No BOS is added.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::gguf::{GgufError, GgufFile};

/// GGUF token type of control tokens (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF token type of user-defined tokens.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Pre-tokenizer regex of Llama 3 (`tokenizer.ggml.pre == "llama-bpe"`).
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Errors produced while building or running a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("unsupported tokenizer model {0:?} (only gpt2 byte-level bpe is supported)")]
    UnsupportedModel(String),
    #[error("unsupported pre-tokenizer {0:?}")]
    UnsupportedPreTokenizer(String),
    #[error("invalid tokenizer data: {0}")]
    Invalid(String),
    #[error("cannot load tokenizer.json {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("tokenizer failed: {0}")]
    Tokenizers(String),
}

/// Result alias for this module.
pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;

fn tk_err(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Tokenizers(e.to_string())
}

/// A byte-level BPE tokenizer with control-token handling.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    token_bytes: Vec<Vec<u8>>,
    control: Vec<bool>,
    bos: Option<u32>,
    eos: Option<u32>,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

/// The GPT-2 byte-to-unicode table: printable bytes map to themselves, the
/// others to code points from U+0100 upwards, in byte order.
fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
        let code = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).unwrap_or('\0');
    }
    table
}

/// Inverse of [`byte_to_char`] as a map.
fn char_to_byte() -> HashMap<char, u8> {
    byte_to_char()
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect()
}

/// Raw bytes of a byte-level token string; characters outside the byte
/// alphabet are kept as their UTF-8 encoding.
fn byte_level_decode(token: &str, table: &HashMap<char, u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(token.len());
    for c in token.chars() {
        match table.get(&c) {
            Some(&b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    let split = |regex: &str| -> Result<PreTokenizerWrapper> {
        Split::new(
            SplitPattern::Regex(regex.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map(PreTokenizerWrapper::Split)
        .map_err(tk_err)
    };
    Ok(match pre {
        // GPT-2 regex, applied by the byte-level pre-tokenizer itself.
        "default" | "gpt-2" | "gpt2" => ByteLevel::new(false, false, true).into(),
        // Every digit on its own, then the GPT-2 regex.
        "smollm" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            split(r"\p{N}")?,
            ByteLevel::new(false, false, true).into(),
        ])),
        "llama-bpe" | "llama3" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            split(LLAMA3_REGEX)?,
            ByteLevel::new(false, false, false).into(),
        ])),
        other => return Err(TokenizerError::UnsupportedPreTokenizer(other.to_string())),
    })
}

impl Tokenizer {
    /// Builds the tokenizer described by the `tokenizer.ggml.*` metadata.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let model = g.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(model.to_string()));
        }
        let pre = g.get_str_opt("tokenizer.ggml.pre")?.unwrap_or("default");
        let pre_tok = pre_tokenizer(pre)?;
        let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
        let types = match g.metadata().get("tokenizer.ggml.token_type") {
            Some(_) => g.get_i32_array("tokenizer.ggml.token_type")?,
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(TokenizerError::Invalid(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let merges = g
            .get_str_array("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| TokenizerError::Invalid(format!("merge without a space: {m:?}")))
            })
            .collect::<Result<Vec<_>>>()?;

        let mut vocab = Vocab::default();
        for (id, tok) in tokens.iter().enumerate() {
            let id =
                u32::try_from(id).map_err(|_| TokenizerError::Invalid("too many tokens".into()))?;
            vocab.entry(tok.clone()).or_insert(id);
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(pre == "llama-bpe" || pre == "llama3")
            .build()
            .map_err(tk_err)?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tok));
        inner.with_decoder(Some(ByteLevelDecoder::default()));

        let control: Vec<bool> = types.iter().map(|&t| t == TOKEN_TYPE_CONTROL).collect();
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL)
            .map(|(tok, _)| AddedToken::from(tok.clone(), true))
            .collect();
        let user: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == TOKEN_TYPE_USER_DEFINED)
            .map(|(tok, _)| AddedToken::from(tok.clone(), false).normalized(false))
            .collect();
        inner.add_special_tokens(&special);
        inner.add_tokens(&user);

        let table = char_to_byte();
        let token_bytes = tokens
            .iter()
            .zip(&types)
            .map(|(tok, &t)| {
                if t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED {
                    tok.as_bytes().to_vec()
                } else {
                    byte_level_decode(tok, &table)
                }
            })
            .collect();

        Ok(Self {
            inner,
            token_bytes,
            control,
            bos: g.get_u32_opt("tokenizer.ggml.bos_token_id")?,
            eos: g.get_u32_opt("tokenizer.ggml.eos_token_id")?,
            chat_template: g
                .get_str_opt("tokenizer.chat_template")?
                .map(str::to_string),
        })
    }

    /// Loads a Hugging Face `tokenizer.json`.
    ///
    /// BOS/EOS ids and the chat template are not part of that file and are
    /// left unset; special added tokens count as control tokens.
    pub fn from_tokenizer_json(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| TokenizerError::Load {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let vocab = inner.get_vocab(true);
        let n = vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
        let mut strings: Vec<Option<String>> = vec![None; n];
        for (tok, id) in vocab {
            if let Some(slot) = strings.get_mut(id as usize) {
                *slot = Some(tok);
            }
        }
        let added = inner.get_added_tokens_decoder();
        let table = char_to_byte();
        let byte_level = strings
            .iter()
            .enumerate()
            .filter(|(id, _)| !added.contains_key(&(*id as u32)))
            .flat_map(|(_, s)| s.iter())
            .all(|s| s.chars().all(|c| table.contains_key(&c)));
        let mut control = vec![false; n];
        let mut token_bytes = Vec::with_capacity(n);
        for (id, s) in strings.iter().enumerate() {
            let id32 = id as u32;
            let bytes = match (added.get(&id32), s) {
                (Some(a), _) => {
                    control[id] = a.special;
                    a.content.as_bytes().to_vec()
                }
                (None, Some(s)) if byte_level => byte_level_decode(s, &table),
                (None, Some(_)) => inner
                    .decode(&[id32], false)
                    .map(String::into_bytes)
                    .unwrap_or_default(),
                (None, None) => Vec::new(),
            };
            token_bytes.push(bytes);
        }
        Ok(Self {
            inner,
            token_bytes,
            control,
            bos: None,
            eos: None,
            chat_template: None,
        })
    }

    /// Sets the chat template (a `tokenizer.json` does not carry one).
    pub fn set_chat_template(&mut self, template: String) {
        self.chat_template = Some(template);
    }

    /// Token ids of `text`; control tokens written in the text become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(tk_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of a token sequence; invalid UTF-8 is replaced (lossy).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| self.token_bytes(id).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Raw bytes a token stands for; control tokens give their text, unknown
    /// ids an empty slice.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// Id of a vocabulary entry by its exact (stored) text, e.g. `<|im_end|>`.
    pub fn token_id(&self, token_text: &str) -> Option<u32> {
        self.inner.token_to_id(token_text)
    }

    /// Beginning-of-sequence id, if the model declares one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence id, if the model declares one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Whether `id` is a control token.
    pub fn is_control(&self, id: u32) -> bool {
        self.control.get(id as usize).copied().unwrap_or(false)
    }

    /// Chat template (Jinja source) stored with the model, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
}
