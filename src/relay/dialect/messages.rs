//! A chat history sent whole by the client (`openai`, `vercel`, `agui`: DIALECTS.md rule 3):
//! the last `user` message is the run's `message`, the earlier `user` and `assistant` messages
//! its `conversation_history` (`{role, content}` each); other roles are left out (the flow owns
//! its prompts).

use serde_json::{Value, json};

/// Who wrote a message, as far as a run is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
    /// `system`, `developer` and the like: not passed on.
    Other,
}

impl Role {
    /// `user` and `assistant`; anything else is [`Role::Other`].
    pub fn of(name: &str) -> Role {
        match name {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            _ => Role::Other,
        }
    }
}

/// The run's message and history, or `None` when there is no `user` message with text.
pub fn split(messages: Vec<(Role, String)>) -> Option<(String, Vec<Value>)> {
    let last = messages
        .iter()
        .rposition(|(role, text)| *role == Role::User && !text.trim().is_empty())?;
    let mut messages = messages;
    let (_, message) = messages.swap_remove(last);
    messages.truncate(last);
    let history = messages
        .into_iter()
        .filter_map(|(role, text)| {
            let role = match role {
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::Other => return None,
            };
            (!text.is_empty()).then(|| json!({"role": role, "content": text}))
        })
        .collect();
    Some((message, history))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_user_message_is_the_message_and_the_rest_the_history() {
        let (message, history) = split(vec![
            (Role::Other, "be brief".into()),
            (Role::User, "Hi".into()),
            (Role::Assistant, "Hello!".into()),
            (Role::User, "What is flowgate?".into()),
            (Role::Assistant, "(an answer being regenerated)".into()),
        ])
        .unwrap();
        assert_eq!(message, "What is flowgate?");
        assert_eq!(
            history,
            vec![
                json!({"role": "user", "content": "Hi"}),
                json!({"role": "assistant", "content": "Hello!"}),
            ]
        );
        assert!(split(vec![(Role::Assistant, "only me".into())]).is_none());
        assert!(split(vec![(Role::User, "  ".into())]).is_none());
    }
}
