//! The hub's user index: a user's connections on this node, one shard of
//! them, and the personal channel streams of the users that have one.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hashbrown::HashTable;

use crate::client::ClientHandle;
use crate::subscription::Stream;

/// A user's connections on this node: most users have one, kept inline (no
/// allocation); more go to a boxed vector, so the entry stays two words.
#[derive(Debug)]
pub(super) enum UserClients {
    One(Arc<ClientHandle>),
    // Boxed so that the entry of the common `One` case stays two words.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<Arc<ClientHandle>>>),
}

impl UserClients {
    pub(super) fn as_slice(&self) -> &[Arc<ClientHandle>] {
        match self {
            UserClients::One(c) => std::slice::from_ref(c),
            UserClients::Many(v) => v,
        }
    }

    /// The user, read from a connection: the table stores no key of its own.
    pub(super) fn user(&self) -> &str {
        match self {
            UserClients::One(c) => &c.user,
            // A `Many` always holds two or more (see `remove`).
            UserClients::Many(v) => v.first().map_or("", |c| &c.user),
        }
    }

    fn push(&mut self, client: Arc<ClientHandle>) {
        match self {
            UserClients::One(first) => {
                *self = UserClients::Many(Box::new(vec![first.clone(), client]));
            }
            UserClients::Many(v) => v.push(client),
        }
    }

    /// Removes the client with `key`: `None` when it was not there, else
    /// whether none is left.
    fn remove(&mut self, key: u64) -> Option<bool> {
        match self {
            UserClients::One(c) => (c.key == key).then_some(true),
            UserClients::Many(v) => {
                let i = v.iter().position(|c| c.key == key)?;
                v.swap_remove(i);
                if v.len() == 1
                    && let Some(last) = v.pop()
                {
                    *self = UserClients::One(last);
                }
                Some(false)
            }
        }
    }
}

/// One shard of the user index: entries hashed by user with the hub's
/// hasher, the key read from the entry's connections; and the personal
/// channel streams of those users that have one (only while a publication
/// reached them or a subscribe to it is under way, so an idle connection
/// pays nothing for it).
#[derive(Debug, Default)]
pub(super) struct Users(
    pub(super) HashTable<UserClients>,
    pub(super) HashMap<Arc<str>, Stream>,
);

impl Users {
    pub(super) fn get(&self, hash: u64, user: &str) -> Option<&UserClients> {
        self.0.find(hash, |e| e.user() == user)
    }

    /// Forgets `user`'s personal stream once nobody listens on it.
    pub(super) fn tidy(&mut self, hash: u64, user: &str) {
        let listening = self.get(hash, user).is_some_and(|l| {
            l.as_slice()
                .iter()
                .any(|c| c.personal.load(Ordering::Relaxed))
        });
        if !listening
            && self.1.get(user).is_some_and(|s| !s.has_joiners())
            && self.1.remove(user).is_some()
            && is_sparse(self.1.len(), self.1.capacity())
        {
            self.1.shrink_to_fit();
        }
    }

    /// Adds `client` (whose user hashes to `hash`) unless its user already
    /// has `max_per_user` connections: `None` when it was full, else whether
    /// it is the user's first connection here.
    pub(super) fn add(
        &mut self,
        hash: u64,
        client: &Arc<ClientHandle>,
        max_per_user: usize,
        hasher: &RandomState,
    ) -> Option<bool> {
        match self.0.find_mut(hash, |e| e.user() == &*client.user) {
            Some(list) if list.as_slice().len() >= max_per_user => None,
            Some(list) => {
                list.push(client.clone());
                Some(false)
            }
            None if max_per_user == 0 => None,
            None => {
                self.0
                    .insert_unique(hash, UserClients::One(client.clone()), |e| {
                        hasher.hash_one(e.user())
                    });
                Some(true)
            }
        }
    }

    /// Removes `client`; false when it was not there. Gives memory back once
    /// the table is mostly empty (after a crowd left).
    pub(super) fn remove(
        &mut self,
        hash: u64,
        client: &ClientHandle,
        hasher: &RandomState,
    ) -> bool {
        let Ok(mut entry) = self.0.find_entry(hash, |e| e.user() == &*client.user) else {
            return false;
        };
        let Some(emptied) = entry.get_mut().remove(client.key) else {
            return false;
        };
        if emptied {
            entry.remove();
            if is_sparse(self.0.len(), self.0.capacity()) {
                self.0.shrink_to_fit(|e| hasher.hash_one(e.user()));
            }
        }
        true
    }
}

/// A table worth shrinking: mostly empty, and not small.
pub(super) fn is_sparse(len: usize, capacity: usize) -> bool {
    capacity > 64 && len * 4 < capacity
}
