//! Decoding constrained to the answer schema
//! `{"language": "<one of five>", "label": <0|1>, "summary": "<JSON string>"}`, keys in that
//! order. Fixed text is forced token by token, the language and the label are choices among
//! a few tokens (so their distributions are exact under the constraint), and the summary may
//! use only tokens that keep a JSON string valid. Broken JSON cannot come out.

use automaldesc_common::Language;

/// What constrained decoding needs from a tokenizer.
pub trait Vocab {
    fn vocab_size(&self) -> usize;
    /// The bytes a token stands for (control tokens: their text).
    fn token_bytes(&self, id: u32) -> &[u8];
    fn is_control(&self, id: u32) -> bool;
    /// Tokenizes plain text (no special-token parsing needed).
    fn encode_plain(&self, text: &str) -> Vec<u32>;
}

/// Text the assistant's answer starts with; it is part of the prompt's prefill.
pub const ANSWER_PREFIX: &str = "{\"language\": \"";
const AFTER_LANGUAGE: &str = "\", \"label\": ";
const AFTER_LABEL: &str = ", \"summary\": \"";

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("the tokenizer cannot express the answer schema: {0}")]
    Unsupported(String),
}

/// Token-level tables for one tokenizer, built once.
pub struct AnswerSchema {
    pub prefix: Vec<u32>,
    /// First token of each language name, in `Language::ALL` order; all distinct.
    pub language_first: [u32; 5],
    /// The remaining tokens of each language name followed by `", "label": `.
    language_rest: [Vec<u32>; 5],
    /// Tokens for the digits 0 and 1.
    pub label_ids: [u32; 2],
    close_brace: u32,
    after_label: Vec<u32>,
    /// Tokens allowed inside the summary string when no escape is open.
    string_normal: Vec<u32>,
    /// Bytes of every token, for the slower check inside an escape.
    bytes: Vec<Vec<u8>>,
    control: Vec<bool>,
    pub end_id: u32,
    /// Added to the malicious digit's logit at the label choice: the calibration of a
    /// trained adapter (its validation threshold moved to even odds); 0 for a base model.
    pub label_bias: f32,
    /// A trained adapter's label head (`hidden` weights, then a bias): `h · w + b` of the
    /// label position's final hidden state is added to the malicious digit's logit.
    pub label_head: Option<Vec<f32>>,
    /// A trained adapter's language head (per language: `hidden` weights and a bias), added
    /// to the five language logits at the language choice.
    pub language_head: Option<Vec<f32>>,
}

/// Where a JSON string body stands after some bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrState {
    Normal,
    Escape,
    Unicode(u8),
    /// The closing quote was read; only `}` may follow.
    Closed,
    /// `"}` read: the object is complete.
    Ended,
}

impl StrState {
    /// The state after one byte, or `None` if the byte would break the JSON.
    pub fn step(self, b: u8) -> Option<StrState> {
        match self {
            StrState::Normal => match b {
                b'"' => Some(StrState::Closed),
                b'\\' => Some(StrState::Escape),
                0..=0x1f => None,
                _ => Some(StrState::Normal),
            },
            StrState::Escape => match b {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(StrState::Normal),
                b'u' => Some(StrState::Unicode(0)),
                _ => None,
            },
            StrState::Unicode(k) if b.is_ascii_hexdigit() => Some(if k == 3 {
                StrState::Normal
            } else {
                StrState::Unicode(k + 1)
            }),
            StrState::Unicode(_) => None,
            StrState::Closed if b == b'}' => Some(StrState::Ended),
            StrState::Closed | StrState::Ended => None,
        }
    }

    pub fn run(self, bytes: &[u8]) -> Option<StrState> {
        bytes.iter().try_fold(self, |s, &b| s.step(b))
    }
}

fn single_token(vocab: &dyn Vocab, text: &str) -> Result<u32, SchemaError> {
    match vocab.encode_plain(text).as_slice() {
        [id] => Ok(*id),
        other => Err(SchemaError::Unsupported(format!(
            "{text:?} is {} tokens, expected one",
            other.len()
        ))),
    }
}

impl AnswerSchema {
    pub fn new(vocab: &dyn Vocab, end_id: u32) -> Result<Self, SchemaError> {
        let mut language_first = [0u32; 5];
        let mut language_rest: [Vec<u32>; 5] = Default::default();
        let after_language = vocab.encode_plain(AFTER_LANGUAGE);
        for (i, lang) in Language::ALL.iter().enumerate() {
            let toks = vocab.encode_plain(lang.as_str());
            let (first, rest) = toks.split_first().ok_or_else(|| {
                SchemaError::Unsupported(format!("language {lang} encodes to no token"))
            })?;
            language_first[i] = *first;
            language_rest[i] = rest.iter().chain(&after_language).copied().collect();
        }
        let mut sorted = language_first.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != 5 {
            return Err(SchemaError::Unsupported(
                "two language names start with the same token".into(),
            ));
        }
        let n = vocab.vocab_size();
        let bytes: Vec<Vec<u8>> = (0..n as u32)
            .map(|i| vocab.token_bytes(i).to_vec())
            .collect();
        let control: Vec<bool> = (0..n as u32).map(|i| vocab.is_control(i)).collect();
        let string_normal = (0..n)
            .filter(|&i| !control[i] && !bytes[i].is_empty())
            .filter(|&i| StrState::Normal.run(&bytes[i]).is_some())
            .map(|i| i as u32)
            .collect();
        Ok(Self {
            prefix: vocab.encode_plain(ANSWER_PREFIX),
            language_first,
            language_rest,
            label_ids: [single_token(vocab, "0")?, single_token(vocab, "1")?],
            close_brace: single_token(vocab, "}")?,
            after_label: vocab.encode_plain(AFTER_LABEL),
            string_normal,
            bytes,
            control,
            end_id,
            label_bias: 0.0,
            label_head: None,
            language_head: None,
        })
    }

    /// Tokens allowed next inside the summary string from state `s`.
    pub fn string_allowed(&self, s: StrState) -> std::borrow::Cow<'_, [u32]> {
        if s == StrState::Normal {
            return std::borrow::Cow::Borrowed(&self.string_normal);
        }
        let ids: Vec<u32> = (0..self.bytes.len())
            .filter(|&i| !self.control[i] && !self.bytes[i].is_empty())
            .filter(|&i| s.run(&self.bytes[i]).is_some())
            .map(|i| i as u32)
            .collect();
        std::borrow::Cow::Owned(ids)
    }

    /// The label head's shift for each row of final hidden states `[rows, hidden]` (zeros
    /// without a head).
    pub fn label_head_shift(&self, h: &burn::tensor::Tensor<2>) -> Vec<f32> {
        let rows = h.dims()[0];
        let Some(head) = &self.label_head else {
            return vec![0.0; rows];
        };
        let hidden = head.len() - 1;
        let w = burn::tensor::Tensor::<2>::from_data(
            burn::tensor::TensorData::new(head[..hidden].to_vec(), [hidden, 1]),
            &h.device(),
        );
        let v: Vec<f32> = h
            .clone()
            .matmul(w)
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_else(|_| vec![0.0; rows]);
        v.into_iter().map(|x| x + head[hidden]).collect()
    }

    /// The language head's shifts of the five language logits for each row of final hidden
    /// states `[rows, hidden]` (zeros without a head).
    pub fn language_head_shift(&self, h: &burn::tensor::Tensor<2>) -> Vec<[f32; 5]> {
        let rows = h.dims()[0];
        let Some(head) = &self.language_head else {
            return vec![[0.0; 5]; rows];
        };
        let t = burn::tensor::Tensor::<2>::from_data(
            burn::tensor::TensorData::new(head.clone(), [5, head.len() / 5]),
            &h.device(),
        );
        let v: Vec<f32> = crate::train::forward::language_head_logits(h.clone(), t)
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_else(|_| vec![0.0; rows * 5]);
        v.chunks_exact(5)
            .map(|c| [c[0], c[1], c[2], c[3], c[4]])
            .collect()
    }

    pub fn token_bytes(&self, id: u32) -> &[u8] {
        &self.bytes[id as usize]
    }

    /// The parts of the answer constrained decoding emits, after the prompt's answer prefix.
    pub fn target_parts(
        &self,
        vocab: &dyn Vocab,
        language: Language,
        label: u8,
        summary: &str,
    ) -> TargetParts {
        let i = Language::ALL
            .iter()
            .position(|&l| l == language)
            .expect("a language of Language::ALL");
        let escaped = serde_json::to_string(summary).expect("a string encodes as JSON");
        let mut text = vocab.encode_plain(&escaped[1..escaped.len() - 1]);
        text.extend(vocab.encode_plain("\""));
        TargetParts {
            language: (i as u8, self.language_first[i]),
            language_rest: self.language_rest[i].clone(),
            label: (label.min(1), self.label_ids[usize::from(label.min(1))]),
            after_label: self.after_label.clone(),
            summary: text,
            end: vec![self.close_brace, self.end_id],
        }
    }

    /// The tokens constrained decoding emits for this answer, after the prompt's answer
    /// prefix: the language's first token and its forced rest, the label digit and the
    /// forced text after it, the summary (JSON-escaped, tokenized as plain text) and a
    /// closing quote, then the forced `}` and end of turn. Like decoding with
    /// `max_tokens` new tokens, an answer that does not fit is cut there, unfinished.
    pub fn target_tokens(
        &self,
        vocab: &dyn Vocab,
        language: Language,
        label: u8,
        summary: &str,
        max_tokens: usize,
    ) -> Vec<u32> {
        let mut out = self.target_parts(vocab, language, label, summary).tokens();
        out.truncate(max_tokens);
        out
    }
}

/// An answer's tokens by part.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetParts {
    /// `Language::ALL` index and the first token of the language name (a choice).
    pub language: (u8, u32),
    /// The rest of the name and the text up to the label (forced).
    pub language_rest: Vec<u32>,
    /// The label and its digit (a choice).
    pub label: (u8, u32),
    /// The text between the label and the summary (forced).
    pub after_label: Vec<u32>,
    /// The summary's escaped text and its closing quote (free).
    pub summary: Vec<u32>,
    /// `}` and the end of the turn (forced).
    pub end: Vec<u32>,
}

impl TargetParts {
    pub fn tokens(&self) -> Vec<u32> {
        let mut out = vec![self.language.1];
        out.extend(&self.language_rest);
        out.push(self.label.1);
        out.extend(&self.after_label);
        out.extend(&self.summary);
        out.extend(&self.end);
        out
    }
}

/// What the decoder must do at the next step of one sample.
#[derive(Debug, PartialEq)]
pub enum Next<'a> {
    Forced(u32),
    Language(&'a [u32; 5]),
    Label(&'a [u32; 2]),
    Summary(StrState),
    Done,
}

/// Progress of one sample through the schema.
#[derive(Clone, Debug)]
pub struct AnswerState {
    forced: std::collections::VecDeque<u32>,
    phase: Phase,
    pub language: Option<Language>,
    pub label: Option<u8>,
    /// The summary as raw JSON-string bytes (escapes kept), without the closing quote.
    pub summary_raw: Vec<u8>,
    string: StrState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Language,
    Label,
    Summary,
    End,
    Done,
}

impl Default for AnswerState {
    fn default() -> Self {
        Self::new()
    }
}

impl AnswerState {
    /// A sample whose prompt already ends with `ANSWER_PREFIX`.
    pub fn new() -> Self {
        Self {
            forced: Default::default(),
            phase: Phase::Language,
            language: None,
            label: None,
            summary_raw: Vec::new(),
            string: StrState::Normal,
        }
    }

    pub fn next<'a>(&self, schema: &'a AnswerSchema) -> Next<'a> {
        if let Some(&t) = self.forced.front() {
            return Next::Forced(t);
        }
        match self.phase {
            Phase::Language => Next::Language(&schema.language_first),
            Phase::Label => Next::Label(&schema.label_ids),
            Phase::Summary => Next::Summary(self.string),
            Phase::End | Phase::Done => Next::Done,
        }
    }

    /// Records the token chosen for the step `next` described.
    pub fn advance(&mut self, schema: &AnswerSchema, token: u32) {
        if self.forced.pop_front().is_some() {
            if self.forced.is_empty() && self.phase == Phase::End {
                self.phase = Phase::Done;
            }
            return;
        }
        match self.phase {
            Phase::Language => {
                let i = schema
                    .language_first
                    .iter()
                    .position(|&t| t == token)
                    .unwrap_or(0);
                self.language = Some(Language::ALL[i]);
                self.forced.extend(&schema.language_rest[i]);
                self.phase = Phase::Label;
            }
            Phase::Label => {
                self.label = Some(u8::from(token == schema.label_ids[1]));
                self.forced.extend(&schema.after_label);
                self.phase = Phase::Summary;
            }
            Phase::Summary => {
                for &b in schema.token_bytes(token) {
                    let before = self.string;
                    self.string = before.step(b).unwrap_or(StrState::Ended);
                    if matches!(
                        self.string,
                        StrState::Normal | StrState::Escape | StrState::Unicode(_)
                    ) {
                        self.summary_raw.push(b);
                    }
                }
                match self.string {
                    StrState::Closed => {
                        self.forced.extend([schema.close_brace, schema.end_id]);
                        self.phase = Phase::End;
                    }
                    StrState::Ended => {
                        self.forced.push_back(schema.end_id);
                        self.phase = Phase::End;
                    }
                    _ => {}
                }
            }
            Phase::End => self.phase = Phase::Done,
            Phase::Done => {}
        }
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Whether the label has been chosen (early stop may act from here on).
    pub fn has_label(&self) -> bool {
        self.label.is_some()
    }

    /// The answer as JSON text. An unfinished summary is closed (an open escape is dropped),
    /// so the text always parses; callers record the truncation separately.
    /// A label-only answer: the language and the label, closed without a summary.
    pub fn to_label_json(&self) -> String {
        let lang = self.language.map(|l| l.as_str()).unwrap_or("");
        let label = self
            .label
            .map(|l| l.to_string())
            .unwrap_or_else(|| "null".into());
        format!("{{\"language\": \"{lang}\", \"label\": {label}}}")
    }

    pub fn to_json(&self) -> String {
        let lang = self.language.map(|l| l.as_str()).unwrap_or("");
        let label = self
            .label
            .map(|l| l.to_string())
            .unwrap_or_else(|| "null".into());
        let mut raw = self.summary_raw.clone();
        match self.string {
            StrState::Escape => {
                raw.pop();
            }
            StrState::Unicode(k) => raw.truncate(raw.len() - usize::from(k) - 2),
            _ => {}
        }
        let summary = String::from_utf8_lossy(&raw);
        format!("{{\"language\": \"{lang}\", \"label\": {label}, \"summary\": \"{summary}\"}}")
    }
}
