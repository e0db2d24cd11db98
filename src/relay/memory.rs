//! Conversation memory for client protocols whose frontends send only the new message.
//!
//! Design note. The frontends of the other chat systems (DIALECTS.md rule 3, docs/dialects.md)
//! assume the server remembers the conversation. flowgate keeps, per conversation key **and
//! user** (a user never reads another's conversation, whatever key they name), the last
//! `--history-messages` user and answer texts, and hands them to the next run as its
//! `conversation_history`. Everything is bounded: at most `--history-conversations`
//! conversations (the oldest is forgotten first), each text at most [`MAX_TEXT_BYTES`]. The
//! memory lives in this gateway's process: a restart forgets it (the run log keeps every run).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde_json::{Value, json};

/// Longest text kept per message (longer ones are cut at a character boundary).
pub const MAX_TEXT_BYTES: usize = 32 * 1024;

type Key = (String, String);

#[derive(Debug)]
pub struct Conversations {
    max_messages: usize,
    max_conversations: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    turns: HashMap<Key, VecDeque<(&'static str, String)>>,
    /// Keys in the order they were first seen (eviction order).
    order: VecDeque<Key>,
    /// Owners of global conversation ids ([`Conversations::claim`]), and their claim order.
    owners: HashMap<String, String>,
    claimed: VecDeque<String>,
}

impl Conversations {
    pub fn new(max_messages: usize, max_conversations: usize) -> Conversations {
        Conversations {
            max_messages,
            max_conversations: max_conversations.max(1),
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The conversation's remembered messages, oldest first, as `conversation_history`
    /// entries (`{role, content}`).
    pub fn history(&self, user: &str, conversation: &str) -> Vec<Value> {
        let key = (user.to_owned(), conversation.to_owned());
        self.lock()
            .turns
            .get(&key)
            .map(|msgs| {
                msgs.iter()
                    .map(|(role, content)| json!({"role": role, "content": content}))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Remember one finished turn: the user's message and the answer (empty answers are
    /// left out).
    pub fn remember(&self, user: &str, conversation: &str, message: &str, answer: &str) {
        if self.max_messages == 0 {
            return;
        }
        let key = (user.to_owned(), conversation.to_owned());
        let mut inner = self.lock();
        if !inner.turns.contains_key(&key) {
            while inner.turns.len() >= self.max_conversations {
                let Some(oldest) = inner.order.pop_front() else {
                    break;
                };
                inner.turns.remove(&oldest);
            }
            inner.order.push_back(key.clone());
        }
        let msgs = inner.turns.entry(key).or_default();
        msgs.push_back(("user", cut(message)));
        if !answer.is_empty() {
            msgs.push_back(("assistant", cut(answer)));
        }
        while msgs.len() > self.max_messages {
            msgs.pop_front();
        }
    }

    /// Record that `user` owns `conversation` (a global id); `false` when another user does.
    /// Bounded like the conversations (the oldest claims are forgotten first).
    pub fn claim(&self, user: &str, conversation: &str) -> bool {
        let mut inner = self.lock();
        if let Some(owner) = inner.owners.get(conversation) {
            return owner == user;
        }
        while inner.owners.len() >= self.max_conversations {
            let Some(oldest) = inner.claimed.pop_front() else {
                break;
            };
            inner.owners.remove(&oldest);
        }
        inner
            .owners
            .insert(conversation.to_owned(), user.to_owned());
        inner.claimed.push_back(conversation.to_owned());
        true
    }

    /// Conversations remembered.
    pub fn len(&self) -> usize {
        self.lock().turns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn cut(text: &str) -> String {
    if text.len() <= MAX_TEXT_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_TEXT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_messages_of_each_users_conversation_are_kept() {
        let c = Conversations::new(3, 10);
        c.remember("alice", "c1", "hi", "hello");
        c.remember("alice", "c1", "how are you?", "fine");
        let h = c.history("alice", "c1");
        assert_eq!(
            h,
            vec![
                json!({"role": "assistant", "content": "hello"}),
                json!({"role": "user", "content": "how are you?"}),
                json!({"role": "assistant", "content": "fine"}),
            ]
        );
        assert!(c.history("bob", "c1").is_empty(), "another user's key");
        assert!(c.history("alice", "c2").is_empty());
    }

    #[test]
    fn a_global_conversation_id_belongs_to_its_first_user() {
        let c = Conversations::new(4, 2);
        assert!(c.claim("alice", "conv_1"));
        assert!(c.claim("alice", "conv_1"));
        assert!(!c.claim("bob", "conv_1"));
        assert!(c.claim("bob", "conv_2"));
        assert!(c.claim("bob", "conv_3"), "bounded: the oldest claim goes");
        assert!(c.claim("bob", "conv_1"));
    }

    #[test]
    fn the_oldest_conversation_is_forgotten_first_and_texts_are_cut() {
        let c = Conversations::new(4, 2);
        c.remember("u", "a", "1", "");
        c.remember("u", "b", "2", "");
        c.remember("u", "c", "3", "");
        assert_eq!(c.len(), 2);
        assert!(c.history("u", "a").is_empty());
        assert_eq!(c.history("u", "c").len(), 1);
        let long = "é".repeat(MAX_TEXT_BYTES);
        c.remember("u", "c", &long, "");
        let kept = c.history("u", "c")[1]["content"].as_str().unwrap().len();
        assert!(kept <= MAX_TEXT_BYTES && kept > MAX_TEXT_BYTES - 2);
    }
}
