//! Sluice's control plane: the canary state machine ([`machine`]), the
//! evidence it runs on ([`provider`], [`analysis`]), the routers that move
//! traffic ([`router`]), and the drivers around them: `sluice rollout` for
//! plain hosts ([`runner`], [`control`]) and `sluice demo` ([`demo`]).
//!
//! The binary `sluice` is a thin wrapper over this library.

pub mod analysis;
pub mod clock;
pub mod control;
pub mod counters;
pub mod dashboard;
pub mod demo;
pub mod external;
pub mod gate;
pub mod hook_queue;
pub mod http;
pub mod input;
pub mod kube;
pub mod machine;
pub mod notify;
pub mod ordered_queue;
pub mod plan;
pub mod provider;
pub mod record;
pub mod report;
pub mod report_html;
pub mod router;
pub mod runner;
pub mod scrape;
pub mod simulate;
pub mod view;
pub mod webhook;
