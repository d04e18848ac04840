//! Chat prompts from the model's own Jinja template (`tokenizer.chat_template`), rendered with
//! minijinja the way transformers' `apply_chat_template` renders it: `trim_blocks` and
//! `lstrip_blocks` on, `messages`, `add_generation_prompt`, `bos_token`, `eos_token` and
//! `raise_exception` in scope, Python's string methods available.

use crate::api::Message;
use crate::error::{ApiError, ServeError};
use engine::tokenizer::Tokenizer;
use engine::Model;

const NAME: &str = "chat_template";

pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// The model's template, or None when it has none (chat requests are then refused).
    pub fn from_model(model: &Model) -> Result<Option<ChatTemplate>, ServeError> {
        let Some(source) = model.chat_template.clone() else { return Ok(None) };
        let text = |id: Option<u32>| id.and_then(|id| model.tokenizer.token_text(id)).unwrap_or("").to_string();
        ChatTemplate::new(source, text(model.tokenizer.bos_id()), text(model.tokenizer.eos_id())).map(Some)
    }

    pub fn new(source: String, bos_token: String, eos_token: String) -> Result<ChatTemplate, ServeError> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned(NAME, source).map_err(|e| ServeError::Template(e.to_string()))?;
        Ok(ChatTemplate { env, bos_token, eos_token })
    }

    /// The prompt for `messages` as text and as token ids: control-token texts the template
    /// writes (`<|im_start|>`, ...) are those tokens, as in transformers and llama.cpp.
    pub fn prompt(&self, tokenizer: &Tokenizer, messages: &[Message]) -> Result<(String, Vec<u32>), ApiError> {
        let text = self.render(messages)?;
        let mut ids = tokenizer.encode_with_special(&text);
        // A template that writes bos_token itself, for a model that adds BOS: one BOS, as
        // transformers gives (it adds no special tokens to a rendered chat).
        if tokenizer.add_bos() && ids.len() >= 2 && ids[1] == ids[0] && Some(ids[0]) == tokenizer.bos_id() {
            ids.remove(0);
        }
        Ok((text, ids))
    }

    /// The prompt text for `messages`, ending with the assistant's turn opened.
    pub fn render(&self, messages: &[Message]) -> Result<String, ApiError> {
        let template = self.env.get_template(NAME).map_err(|e| ApiError::server(e.to_string()))?;
        let context = minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        };
        // A template that raises (e.g. roles out of order) refuses the messages: the client's fault.
        template.render(context).map_err(|e| ApiError::invalid(Some("messages"), format!("the model's chat template refused the messages: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> Message {
        Message { role: role.into(), content: content.into() }
    }

    #[test]
    fn blocks_are_trimmed_as_in_transformers() {
        // With trim_blocks and lstrip_blocks, the block tags' own lines leave no whitespace.
        let source = "{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content }}]\n  {% endif %}\n{% endfor %}{{ eos_token }}";
        let t = ChatTemplate::new(source.into(), "<s>".into(), "</s>".into()).unwrap();
        assert_eq!(t.render(&[msg("user", "a"), msg("system", "b"), msg("user", "c")]).unwrap(), "[a]\n[c]\n</s>");
    }

    #[test]
    fn raise_exception_refuses_the_request_and_python_methods_work() {
        let source =
            "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ messages[0].content.strip().upper() }}";
        let t = ChatTemplate::new(source.into(), String::new(), String::new()).unwrap();
        assert_eq!(t.render(&[msg("user", "  hi ")]).unwrap(), "HI");
        let e = t.render(&[msg("system", "x")]).unwrap_err();
        assert_eq!(e.param, Some("messages"));
        assert!(e.message.contains("first must be user"), "{}", e.message);
    }

    #[test]
    fn a_template_that_does_not_parse_is_a_startup_error() {
        assert!(matches!(ChatTemplate::new("{% for %}".into(), String::new(), String::new()), Err(ServeError::Template(_))));
    }
}
