//! Llama 3 byte-level BPE tokenizer. (Contract; implementation in progress.)

/// One chat message; `role` is `system`, `user` or `assistant` (any case).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

pub struct Tokenizer {
    _private: (),
}

impl Tokenizer {
    /// Encodes plain text (special-token text stays plain text), optionally with BOS first.
    pub fn encode(&self, _text: &str, _add_bos: bool) -> Vec<u32> {
        unimplemented!()
    }
    /// BOS, then `Role: content<|eot_id|>` per message, then `Assistant: `.
    pub fn encode_chat(&self, _messages: &[ChatMessage]) -> Vec<u32> {
        unimplemented!()
    }
    pub fn decode(&self, _ids: &[u32]) -> String {
        unimplemented!()
    }
}
