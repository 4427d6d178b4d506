//! The Lua scripts, loaded once per process and run by hash (`EVALSHA`,
//! falling back to loading them where a server does not know them yet, as
//! after a restart or on a new Cluster shard).

use redis::Script;

pub(crate) struct Scripts {
    pub publish: Script,
    pub history: Script,
    pub history_admit: Script,
    pub presence_add: Script,
    pub presence_remove: Script,
    pub presence_get: Script,
    pub presence_join: Script,
    pub presence_leave: Script,
    pub set_add: Script,
    pub set_remove: Script,
    pub set_live: Script,
    pub nodes_announce: Script,
    pub nodes_live: Script,
    pub probe: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Scripts {
            publish: Script::new(include_str!("lua/publish.lua")),
            history: Script::new(include_str!("lua/history.lua")),
            history_admit: Script::new(include_str!("lua/history_admit.lua")),
            presence_add: Script::new(include_str!("lua/presence_add.lua")),
            presence_remove: Script::new(include_str!("lua/presence_remove.lua")),
            presence_get: Script::new(include_str!("lua/presence_get.lua")),
            presence_join: Script::new(include_str!("lua/presence_join.lua")),
            presence_leave: Script::new(include_str!("lua/presence_leave.lua")),
            set_add: Script::new(include_str!("lua/expiring_set_add.lua")),
            set_remove: Script::new(include_str!("lua/expiring_set_remove.lua")),
            set_live: Script::new(include_str!("lua/expiring_set_live.lua")),
            nodes_announce: Script::new(include_str!("lua/nodes_announce.lua")),
            nodes_live: Script::new(include_str!("lua/nodes_live.lua")),
            probe: Script::new(include_str!("lua/probe.lua")),
        }
    }
}
