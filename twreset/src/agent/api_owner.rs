//! The control API's [`Owner`] for the agent's command channel: each call is one message to the
//! table's owner.

use tokio::sync::broadcast;

use crate::{
    agent::command::{Command, Commands},
    api::{EventBatch, Health, Owner, OwnerGone, ReliefAction, TwQuery},
    kill::report::Totals,
    table::Snapshot,
};

impl Owner for Commands {
    async fn tw(&self, query: TwQuery) -> Result<Snapshot, OwnerGone> {
        self.ask(|reply| Command::TwIn { query, reply }).await.map_err(|_| OwnerGone)
    }

    async fn subscribe(&self) -> Result<broadcast::Receiver<EventBatch>, OwnerGone> {
        Commands::subscribe(self).await.map_err(|_| OwnerGone)
    }

    async fn health(&self) -> Result<Health, OwnerGone> {
        // The owner reports one flag: seeded and attached.
        let s = self.status().await.map_err(|_| OwnerGone)?;
        Ok(Health { seeded: s.ready, attached: s.ready })
    }

    async fn relief(&self, action: ReliefAction) -> Result<serde_json::Value, OwnerGone> {
        let status = Commands::relief(self, action).await.map_err(|_| OwnerGone)?;
        serde_json::to_value(status).map_err(|_| OwnerGone)
    }

    fn kills_done(&self, trigger: &'static str, totals: &Totals) {
        // A full queue loses a count, never makes the API wait.
        let _ = self.0.try_send(Command::Killed { trigger, totals: totals.clone() });
    }
}
