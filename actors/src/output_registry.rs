//! The one writer of output configurations and connections: validates, stores, and starts,
//! restarts or stops the connections' delivery loops to match.

use crate::delivery::{build_output, AudienceInfo, Deliveries};
use crate::node::Node;
use crate::registry::RegistryError;
use audience_state::criteria::DefinitionError;
use audience_state::model::AudienceId;
use audience_state::outputs::{
    Connection, ConnectionId, ConnectionStatus, Fault, OutputConfig, OutputId,
};
use parking_lot::Mutex;
use std::sync::Arc;

pub struct OutputRegistry {
    node: Arc<Node>,
    pub deliveries: Arc<Deliveries>,
    write_lock: Mutex<()>,
}

fn invalid(field: &str, reason: impl Into<String>) -> RegistryError {
    RegistryError::Invalid(DefinitionError::new(field, reason))
}

impl OutputRegistry {
    pub fn new(node: Arc<Node>, deliveries: Arc<Deliveries>) -> Self {
        OutputRegistry {
            node,
            deliveries,
            write_lock: Mutex::new(()),
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

    pub fn create_output(&self, mut config: OutputConfig) -> Result<OutputConfig, RegistryError> {
        let _guard = self.write_lock.lock();
        config.validate()?;
        build_output(&config).map_err(|e| invalid("settings", e))?;
        let now = self.node.engine.clock.now();
        config.id = self.store().next_id("outputs")?;
        config.created_at_ms = now;
        config.updated_at_ms = now;
        self.store().put_output(&config)?;
        tracing::info!(output = config.id, name = %config.name, kind = %config.kind, "output configured");
        Ok(config)
    }

    pub fn update_output(&self, mut config: OutputConfig) -> Result<OutputConfig, RegistryError> {
        let _guard = self.write_lock.lock();
        let stored = self.output(config.id)?;
        config.keep_redacted_secrets(&stored)?;
        config.validate()?;
        build_output(&config).map_err(|e| invalid("settings", e))?;
        config.created_at_ms = stored.created_at_ms;
        config.updated_at_ms = self.node.engine.clock.now();
        self.store().put_output(&config)?;
        for c in self
            .connections()?
            .into_iter()
            .filter(|c| c.output_id == config.id)
        {
            self.deliveries.start(&self.node.engine, c, config.clone());
        }
        Ok(config)
    }

    pub fn delete_output(&self, id: OutputId) -> Result<(), RegistryError> {
        let _guard = self.write_lock.lock();
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
        self.store().delete_output(id)?;
        Ok(())
    }

    /// Connects an audience to an output; it starts by sending the current members.
    pub fn connect(&self, mut connection: Connection) -> Result<Connection, RegistryError> {
        let _guard = self.write_lock.lock();
        let catalog = self.node.engine.catalog.load();
        if catalog.record(connection.audience_id).is_none() {
            return Err(invalid(
                "audience_id",
                format!("audience {} does not exist", connection.audience_id),
            ));
        }
        let output = self.output(connection.output_id).map_err(|_| {
            invalid(
                "output_id",
                format!("output {} does not exist", connection.output_id),
            )
        })?;
        let now = self.node.engine.clock.now();
        connection.id = self.store().next_id("connections")?;
        connection.created_at_ms = now;
        connection.updated_at_ms = now;
        self.store().put_connection(&connection)?;
        self.deliveries
            .start(&self.node.engine, connection.clone(), output);
        tracing::info!(
            connection = connection.id,
            audience = connection.audience_id,
            output = connection.output_id,
            "audience connected"
        );
        Ok(connection)
    }

    pub fn update_connection(&self, update: Connection) -> Result<Connection, RegistryError> {
        let _guard = self.write_lock.lock();
        let mut connection = self.connection(update.id)?;
        connection.status = update.status;
        connection.settings = update.settings;
        connection.shared_attributes = update.shared_attributes;
        connection.updated_at_ms = self.node.engine.clock.now();
        self.store().put_connection(&connection)?;
        let output = self.output(connection.output_id)?;
        self.deliveries
            .start(&self.node.engine, connection.clone(), output);
        Ok(connection)
    }

    pub fn disconnect(&self, id: ConnectionId) -> Result<(), RegistryError> {
        let _guard = self.write_lock.lock();
        self.connection(id)?;
        self.deliveries.stop(id);
        self.store().delete_connection(id)?;
        Ok(())
    }

    /// Connects many audiences to one output with the same settings: each gets its own
    /// result, and a bad one does not stop the others.
    pub fn bulk_connect(
        &self,
        output_id: OutputId,
        audience_ids: &[AudienceId],
        status: ConnectionStatus,
        settings: std::collections::BTreeMap<String, serde_json::Value>,
        shared_attributes: Vec<String>,
    ) -> Vec<(AudienceId, Result<Connection, RegistryError>)> {
        audience_ids
            .iter()
            .map(|&audience_id| {
                let result = self.connect(Connection {
                    id: 0,
                    audience_id,
                    output_id,
                    status,
                    settings: settings.clone(),
                    shared_attributes: shared_attributes.clone(),
                    created_at_ms: 0,
                    updated_at_ms: 0,
                });
                (audience_id, result)
            })
            .collect()
    }

    pub fn resume(&self, id: ConnectionId) -> Result<Connection, RegistryError> {
        let connection = self.connection(id)?;
        self.deliveries
            .resume(&self.node.engine, id)
            .map_err(|e| RegistryError::Conflict(e.to_string()))?;
        Ok(connection)
    }

    /// What deleting an audience does to its connections: they go at once (under the write
    /// lock, so no update can bring one back), then each output kind is told, in the
    /// background (webhook and Kafka receive an "audience deleted" message).
    pub fn audience_deleted(&self, audience: &audience_state::catalog::AudienceRecord) {
        let mut notices = Vec::new();
        {
            let _guard = self.write_lock.lock();
            let Ok(connections) = self.connections() else {
                return;
            };
            for c in connections
                .into_iter()
                .filter(|c| c.audience_id == audience.id)
            {
                self.deliveries.stop(c.id);
                if let Err(e) = self.store().delete_connection(c.id) {
                    tracing::warn!(connection = c.id, error = %e, "connection not deleted");
                }
                if let Ok(output) = self.output(c.output_id) {
                    notices.push((c, output));
                }
            }
        }
        let name = if audience.external_name.trim().is_empty() {
            audience.name.clone()
        } else {
            audience.external_name.clone()
        };
        let audience_id = audience.id;
        tokio::spawn(async move {
            for (c, output) in notices {
                let Ok(sink) = build_output(&output) else {
                    continue;
                };
                let info = AudienceInfo {
                    id: audience_id,
                    name: name.clone(),
                    connection_id: c.id,
                    connection_settings: c.settings.clone(),
                };
                if let Err(e) = sink.audience_deleted(&info).await {
                    tracing::warn!(connection = c.id, error = %e.message, "output not told of the deletion");
                }
            }
        });
    }
}
