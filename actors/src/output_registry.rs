//! Output configurations and connections as the API reads and changes them. Reads come from
//! the node's materialised catalog; a change is checked here, proposed to the catalog topic
//! (secrets sealed) and answered once this node applied it: the applier starts, restarts or
//! stops the delivery loops to match (see [`crate::catalog_applier`]).

use crate::catalog_applier::CatalogApplier;
use crate::delivery::Deliveries;
use crate::engine::Quotas;
use crate::node::Node;
use crate::output_kinds::build_output;
use crate::registry::{unexpected, RegistryError};
use audience_state::catalog_log::{check_variation, Applied, Change};
use audience_state::criteria::DefinitionError;
use audience_state::model::AudienceId;
use audience_state::outputs::{
    Connection, ConnectionId, ConnectionStatus, Fault, OutputConfig, OutputId,
};
use std::sync::Arc;

pub struct OutputRegistry {
    node: Arc<Node>,
    pub deliveries: Arc<Deliveries>,
    catalog: Arc<CatalogApplier>,
}

fn invalid(field: &str, reason: impl Into<String>) -> RegistryError {
    RegistryError::Invalid(DefinitionError::new(field, reason))
}

impl OutputRegistry {
    pub fn new(node: Arc<Node>, deliveries: Arc<Deliveries>, catalog: Arc<CatalogApplier>) -> Self {
        OutputRegistry {
            node,
            deliveries,
            catalog,
        }
    }

    fn store(&self) -> &audience_state::store::Store {
        &self.node.engine.store
    }

    pub fn outputs(&self) -> Result<Vec<OutputConfig>, RegistryError> {
        Ok(self.store().load_outputs()?)
    }

    pub fn output(&self, id: OutputId) -> Result<OutputConfig, RegistryError> {
        self.outputs()?
            .into_iter()
            .find(|o| o.id == id)
            .ok_or(RegistryError::OutputNotFound(id))
    }

    pub fn connections(&self) -> Result<Vec<Connection>, RegistryError> {
        Ok(self.store().load_connections()?)
    }

    pub fn connection(&self, id: ConnectionId) -> Result<Connection, RegistryError> {
        self.connections()?
            .into_iter()
            .find(|c| c.id == id)
            .ok_or(RegistryError::ConnectionNotFound(id))
    }

    pub fn fault(&self, id: ConnectionId) -> Result<Option<Fault>, RegistryError> {
        Ok(self.store().fault(id)?)
    }

    pub fn faults(&self) -> Result<Vec<Fault>, RegistryError> {
        Ok(self.store().load_faults()?)
    }

    async fn output_change(&self, by: &str, change: Change) -> Result<OutputConfig, RegistryError> {
        match self.catalog.submit(by, change).await? {
            Applied::Output(output) => Ok(output),
            other => Err(unexpected(other)),
        }
    }

    async fn connection_change(
        &self,
        by: &str,
        change: Change,
    ) -> Result<Connection, RegistryError> {
        match self.catalog.submit(by, change).await? {
            Applied::Connection(connection) => Ok(connection),
            other => Err(unexpected(other)),
        }
    }

    /// Checks an output as it will be used (settings valid, the output can be built, its hosts
    /// outside the engine's network unless allowed), with its secrets in clear: before they
    /// are sealed for the topic.
    async fn check_output(&self, config: &OutputConfig) -> Result<(), RegistryError> {
        config.validate()?;
        let guard = self.deliveries.guard();
        build_output(config, guard).map_err(|e| invalid("settings", e))?;
        guard
            .check_output(config)
            .await
            .map_err(|(field, why)| invalid(field, why))?;
        Ok(())
    }

    /// Configures an output on behalf of `by` (the caller's token name, "" without one), as
    /// every change below: the audit log names it.
    pub async fn create_output(
        &self,
        by: &str,
        config: OutputConfig,
    ) -> Result<OutputConfig, RegistryError> {
        self.check_output(&config).await?;
        let max = self.node.engine.settings.quotas.outputs;
        Quotas::check("outputs", "engine.max_outputs", self.outputs()?.len(), max)
            .map_err(RegistryError::Quota)?;
        let mut config = self.catalog.seal(&config);
        config.id = 0;
        let config = self
            .output_change(by, Change::CreateOutput { output: config })
            .await?;
        tracing::info!(output = config.id, name = %config.name, kind = %config.kind, "output configured");
        Ok(config)
    }

    pub async fn update_output(
        &self,
        by: &str,
        mut config: OutputConfig,
    ) -> Result<OutputConfig, RegistryError> {
        let stored = self.output(config.id)?;
        // Checked here with the stored secrets for those sent back redacted (which stay
        // redacted in the proposal: the record never repeats a secret it does not change).
        let mut checked = config.clone();
        checked.keep_redacted_secrets(&stored)?;
        let opened = self
            .deliveries
            .open(&checked)
            .map_err(|e| invalid("secrets", e))?;
        self.check_output(&opened).await?;
        config = self.catalog.seal(&config);
        self.output_change(by, Change::PutOutput { output: config })
            .await
    }

    pub async fn delete_output(&self, by: &str, id: OutputId) -> Result<(), RegistryError> {
        self.output(id)?;
        let users: Vec<String> = self
            .connections()?
            .iter()
            .filter(|c| c.output_id == id)
            .map(|c| format!("connection {} (audience {})", c.id, c.audience_id))
            .collect();
        if !users.is_empty() {
            return Err(RegistryError::Conflict(format!(
                "output {id} is used by {}: delete them first",
                users.join(", ")
            )));
        }
        self.catalog.submit(by, Change::DeleteOutput { id }).await?;
        Ok(())
    }

    /// Connects an audience to an output; it starts by sending the current members.
    pub async fn connect(
        &self,
        by: &str,
        mut connection: Connection,
    ) -> Result<Connection, RegistryError> {
        let catalog = self.node.engine.catalog.load();
        let Some(audience) = catalog.record(connection.audience_id) else {
            return Err(invalid(
                "audience_id",
                format!("audience {} does not exist", connection.audience_id),
            ));
        };
        // A variation is named in any case; the connection keeps the test's spelling.
        if let Some(name) = audience
            .ab_test
            .as_ref()
            .and_then(|test| test.find(&connection.variation))
        {
            connection.variation = name.to_string();
        }
        check_variation(audience, &connection.variation)?;
        self.output(connection.output_id).map_err(|_| {
            invalid(
                "output_id",
                format!("output {} does not exist", connection.output_id),
            )
        })?;
        let max = self.node.engine.settings.quotas.connections;
        let held = self.connections()?.len();
        Quotas::check("connections", "engine.max_connections", held, max)
            .map_err(RegistryError::Quota)?;
        connection.id = 0;
        let connection = self
            .connection_change(by, Change::Connect { connection })
            .await?;
        tracing::info!(
            connection = connection.id,
            audience = connection.audience_id,
            output = connection.output_id,
            "audience connected"
        );
        Ok(connection)
    }

    pub async fn update_connection(
        &self,
        by: &str,
        update: Connection,
    ) -> Result<Connection, RegistryError> {
        let mut connection = self.connection(update.id)?;
        connection.status = update.status;
        connection.settings = update.settings;
        connection.shared_attributes = update.shared_attributes;
        self.connection_change(by, Change::PutConnection { connection })
            .await
    }

    pub async fn disconnect(&self, by: &str, id: ConnectionId) -> Result<(), RegistryError> {
        self.connection(id)?;
        self.catalog.submit(by, Change::Disconnect { id }).await?;
        Ok(())
    }

    /// Connects many audiences to one output with the same settings: each gets its own
    /// result, and a bad one does not stop the others.
    pub async fn bulk_connect(
        &self,
        by: &str,
        output_id: OutputId,
        audience_ids: &[AudienceId],
        status: ConnectionStatus,
        settings: std::collections::BTreeMap<String, serde_json::Value>,
        shared_attributes: Vec<String>,
    ) -> Vec<(AudienceId, Result<Connection, RegistryError>)> {
        let mut results = Vec::with_capacity(audience_ids.len());
        for &audience_id in audience_ids {
            let result = self
                .connect(
                    by,
                    Connection {
                        id: 0,
                        audience_id,
                        output_id,
                        status,
                        settings: settings.clone(),
                        shared_attributes: shared_attributes.clone(),
                        created_at_ms: 0,
                        updated_at_ms: 0,
                        variation: String::new(),
                    },
                )
                .await;
            results.push((audience_id, result));
        }
        results
    }

    /// Resumes a connection on every node (through the catalog topic: each node delivering
    /// its partitions met its own fault, or none).
    pub async fn resume(&self, by: &str, id: ConnectionId) -> Result<Connection, RegistryError> {
        match self.catalog.submit(by, Change::Resume { id }).await? {
            Applied::Resumed(connection) => Ok(connection),
            other => Err(unexpected(other)),
        }
    }
}
