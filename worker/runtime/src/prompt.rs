//! The annotator's prompt and the chat templates it is rendered with. Training and
//! inference must render identically, so both call `render_annotation`.

/// The chat formats the product knows, detected from a model's own template text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `<|im_start|>role\n...<|im_end|>\n` (SmolLM2, Qwen). `default_system` is inserted
    /// when a conversation has no system message, as SmolLM2's template does.
    ChatMl { default_system: Option<String> },
    /// `<|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>` (Llama 3).
    Llama3,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unsupported chat template: {0}")]
pub struct TemplateError(String);

impl ChatTemplate {
    /// Recognises a Jinja chat template by its markers. SmolLM2's default system message is
    /// read out of the template text itself.
    pub fn detect(template: &str) -> Result<Self, TemplateError> {
        if template.contains("<|im_start|>") {
            let marker = "<|im_start|>system\n";
            let default_system = template.find(marker).and_then(|i| {
                let rest = &template[i + marker.len()..];
                let end = rest.find("<|im_end|>")?;
                let text = &rest[..end];
                (!text.contains("{{") && !text.contains('\'')).then(|| text.to_string())
            });
            Ok(ChatTemplate::ChatMl { default_system })
        } else if template.contains("<|start_header_id|>") {
            Ok(ChatTemplate::Llama3)
        } else {
            let head: String = template.chars().take(60).collect();
            Err(TemplateError(head))
        }
    }

    /// Renders a conversation; with `add_generation_prompt` it ends where the assistant's
    /// answer begins.
    pub fn render(&self, messages: &[(Role, &str)], add_generation_prompt: bool) -> String {
        let mut out = String::new();
        match self {
            ChatTemplate::ChatMl { default_system } => {
                if let (Some(sys), Some((role, _))) = (default_system, messages.first()) {
                    if *role != Role::System {
                        out.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
                    }
                }
                for (role, text) in messages {
                    out.push_str(&format!(
                        "<|im_start|>{}\n{text}<|im_end|>\n",
                        role.as_str()
                    ));
                }
                if add_generation_prompt {
                    out.push_str("<|im_start|>assistant\n");
                }
            }
            ChatTemplate::Llama3 => {
                out.push_str("<|begin_of_text|>");
                for (role, text) in messages {
                    out.push_str(&format!(
                        "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>",
                        role.as_str(),
                        text.trim()
                    ));
                }
                if add_generation_prompt {
                    out.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
                }
            }
        }
        out
    }

    /// The token text that ends an assistant turn.
    pub fn end_of_turn(&self) -> &'static str {
        match self {
            ChatTemplate::ChatMl { .. } => "<|im_end|>",
            ChatTemplate::Llama3 => "<|eot_id|>",
        }
    }
}

/// System message of the annotator and the judge.
pub const ANNOTATOR_SYSTEM: &str = "You are a malware analyst. You read one script and answer \
with a single JSON object with the keys language, label and summary, in that order. language \
is one of bash, batch, javascript, powershell, python. label is 1 if the script is malicious \
and 0 if it is benign. summary is a technical analysis of three or four paragraphs, about 200 \
to 250 words: for a malicious script the attack type, how it runs step by step naming the \
concrete commands, flags, ports, APIs and paths it uses, and what it does to the system; for a \
benign script its legitimate purpose, in proportion to its size. No code, no markdown, no \
hedging, and never mention the label itself.";

/// A shorter system message for the annotator and the judge: the same task in a few
/// dozen tokens, leaving the prompt budget to the script.
pub const ANNOTATOR_SYSTEM_COMPACT: &str = "You are a malware analyst. Answer with one JSON \
object: language (bash, batch, javascript, powershell or python), label (1 malicious, 0 benign) \
and summary (a technical analysis of what the script does).";

/// Which system messages a model is prompted with.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PromptStyle {
    /// The full instructions (the published prompt's content).
    #[default]
    Full,
    /// [`ANNOTATOR_SYSTEM_COMPACT`] and [`JUDGE_SYSTEM_COMPACT`].
    Compact,
}

impl PromptStyle {
    pub fn annotator_system(self) -> &'static str {
        match self {
            PromptStyle::Full => ANNOTATOR_SYSTEM,
            PromptStyle::Compact => ANNOTATOR_SYSTEM_COMPACT,
        }
    }

    pub fn judge_system(self) -> &'static str {
        match self {
            PromptStyle::Full => JUDGE_SYSTEM,
            PromptStyle::Compact => JUDGE_SYSTEM_COMPACT,
        }
    }
}

/// The user turn that carries the script.
pub fn annotation_user_message(script: &str) -> String {
    format!("Analyse this script.\n\n<script>\n{script}\n</script>")
}

/// System message of the judge, which reads a summary and never the script.
pub const JUDGE_SYSTEM: &str = "You are a malware analyst reviewing another analyst's work. You \
read a technical summary of a script, never the script itself, and decide whether the script it \
describes is malicious. You answer with a single digit: 1 if it is malicious, 0 if it is benign.";

/// The compact judge's system message.
pub const JUDGE_SYSTEM_COMPACT: &str = "You are a malware analyst. You read a summary of a \
script and answer 1 if the script is malicious, 0 if it is benign.";

/// The judge's user turn: one summary.
pub fn judge_user_message(summary: &str) -> String {
    format!(
        "Summary of a script:\n\n<summary>\n{summary}\n</summary>\n\nIs the script malicious? \
Answer 1 (malicious) or 0 (benign)."
    )
}

/// System message of the judge comparing two summaries of one script.
pub const PREFERENCE_SYSTEM: &str = "You are a malware analyst reviewing two technical summaries \
of the same script. You answer with a single letter: A if summary A describes the script more \
accurately and usefully, B if summary B does.";

/// The preference judge's user turn: the script and two summaries.
pub fn preference_user_message(script: &str, a: &str, b: &str) -> String {
    format!(
        "<script>\n{script}\n</script>\n\n<summary A>\n{a}\n</summary A>\n\n<summary B>\n{b}\n\
</summary B>\n\nWhich summary is better? Answer A or B."
    )
}

/// Marker put where the middle of an over-long script was cut.
pub fn truncation_marker(dropped_bytes: usize) -> String {
    format!("\n[... {dropped_bytes} bytes of the script omitted here ...]\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOL: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    #[test]
    fn smollm_template_inserts_its_default_system_message() {
        let t = ChatTemplate::detect(&SMOL.replace("\\n", "\n")).unwrap();
        assert_eq!(
            t,
            ChatTemplate::ChatMl {
                default_system: Some(
                    "You are a helpful AI assistant named SmolLM, trained by Hugging Face".into()
                )
            }
        );
        let text = t.render(&[(Role::User, "hi")], true);
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        let with_system = t.render(&[(Role::System, "S"), (Role::User, "hi")], false);
        assert_eq!(
            with_system,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        );
    }

    #[test]
    fn llama3_headers() {
        let t = ChatTemplate::detect("{{ '<|start_header_id|>' }}").unwrap();
        assert_eq!(
            t.render(&[(Role::User, "hi")], true),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert!(ChatTemplate::detect("{{ messages }}").is_err());
    }
}
