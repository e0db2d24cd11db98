//! The answer text of a turn, for dialects that show text rather than events (DIALECTS.md
//! rule 4): deltas are the non-empty `llm_chunk` contents in order; at each `final_output` with
//! `text_output` T and streamed text S, T = S adds nothing, T starting with S adds its tail, T
//! alone (nothing streamed) is one delta, and any other T is a separate block.

/// The `text_output` of a `final_output` event's `data` as text (`None` when it has none).
pub fn text_output(data: &serde_json::Value) -> Option<String> {
    match &data["text_output"] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// What an event adds to the text a client shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Append this text to the current block.
    Delta(String),
    /// A separate block of text (a new message where the dialect has ids, else after "\n\n").
    Block(String),
}

/// The text of one turn so far.
#[derive(Debug, Default, Clone)]
pub struct Answer {
    streamed: String,
    /// The last `final_output`'s text (the full answer when the flow had one).
    full: Option<String>,
}

impl Answer {
    /// An `llm_chunk`'s content.
    pub fn chunk(&mut self, content: &str) -> Option<Piece> {
        if content.is_empty() {
            return None;
        }
        self.streamed.push_str(content);
        Some(Piece::Delta(content.to_owned()))
    }

    /// A `final_output`'s `text_output`.
    pub fn final_output(&mut self, text: &str) -> Option<Piece> {
        self.full = Some(text.to_owned());
        if text == self.streamed {
            return None;
        }
        if self.streamed.is_empty() {
            self.streamed.push_str(text);
            return Some(Piece::Delta(text.to_owned()));
        }
        if let Some(tail) = text.strip_prefix(self.streamed.as_str()) {
            let tail = tail.to_owned();
            self.streamed.push_str(&tail);
            return Some(Piece::Delta(tail));
        }
        Some(Piece::Block(text.to_owned()))
    }

    /// Text was shown so far.
    pub fn has_text(&self) -> bool {
        !self.streamed.is_empty()
    }

    /// The full answer: the last `final_output`, else the streamed text.
    pub fn full(&self) -> &str {
        self.full.as_deref().unwrap_or(&self.streamed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_output_adds_only_what_was_not_streamed() {
        let mut a = Answer::default();
        assert_eq!(a.chunk(""), None);
        assert_eq!(a.chunk("Hello"), Some(Piece::Delta("Hello".into())));
        assert_eq!(a.final_output("Hello"), None);
        assert_eq!(
            a.final_output("Hello from flowgate."),
            Some(Piece::Delta(" from flowgate.".into()))
        );
        assert_eq!(a.full(), "Hello from flowgate.");
        assert_eq!(
            a.final_output("Something else"),
            Some(Piece::Block("Something else".into()))
        );
        let mut b = Answer::default();
        assert_eq!(
            b.final_output("All at once"),
            Some(Piece::Delta("All at once".into()))
        );
        let mut c = Answer::default();
        c.chunk("streamed only");
        assert_eq!(c.full(), "streamed only");
    }
}
