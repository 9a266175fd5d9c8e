//! The outer layer of the audience engine: configuration, the gRPC services, and the wiring of
//! a node (`server::run`). The binaries `audience-engine` (the daemon) and `audiencectl` (the
//! operator CLI) are thin on top of it.

pub mod access;
pub mod api_tokens;
pub mod audience_request;
pub mod auth;
pub mod blocking;
pub mod config;
pub mod convert;
pub mod downloads;
pub mod grpc;
pub mod grpc_admin;
pub mod grpc_figures;
pub mod grpc_members;
pub mod grpc_outputs;
pub mod grpc_profiles;
pub mod grpc_tokens;
pub mod grpc_workspaces;
pub mod message_limit;
pub mod offline;
pub mod paging;
pub mod peers;
pub mod replay_report;
pub mod scan_gate;
pub mod server;
pub mod subscriber_slots;
pub mod workspace_view;
