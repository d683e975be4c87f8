//! The metric families of the plain TCP listeners, under the `sluice_tcp_`
//! prefix (a sub-registry of the proxy's):
//!
//! - `sluice_tcp_connections_total{listener, upstream, outcome}`: client
//!   connections, counted once when they end, by [`Outcome`];
//! - `sluice_tcp_active_connections{listener}`: client connections open now;
//! - `sluice_tcp_bytes_total{listener, direction}`: bytes written to the
//!   upstream (`to_upstream`) and to the client (`to_client`), counted as
//!   they go, so a long connection shows its traffic before it ends;
//! - `sluice_tcp_upstream_errors_total{listener, upstream, kind}`: failed
//!   connects to the upstream, by [`ConnectErrorKind`].
//!
//! Handles are resolved once per listener and config ([`ListenerMetrics`]),
//! never per connection; every outcome and error kind of a configured
//! listener is shown at 0 until it happens, so a `rate()` over any of them
//! is never an empty vector.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// How a client connection of a TCP listener ended; the `outcome` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Outcome {
    /// Both directions ended with a close (FIN) from their sender.
    Closed,
    /// A read or write failed on either side (a reset, mostly).
    Reset,
    /// No byte in either direction for the listener's `timeouts.idle`.
    IdleTimeout,
    /// The upstream could not be connected (see
    /// `sluice_tcp_upstream_errors_total` for why); the client's
    /// connection was closed without a byte.
    ConnectError,
    /// `limits.max_tcp_connections` TCP connections were open already.
    Rejected,
    /// Still open when the proxy's drain timeout ran out at shutdown.
    Shutdown,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Closed,
        Outcome::Reset,
        Outcome::IdleTimeout,
        Outcome::ConnectError,
        Outcome::Rejected,
        Outcome::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Closed => "closed",
            Outcome::Reset => "reset",
            Outcome::IdleTimeout => "idle_timeout",
            Outcome::ConnectError => "connect_error",
            Outcome::Rejected => "rejected",
            Outcome::Shutdown => "shutdown",
        }
    }
}

/// Why a connect to a TCP listener's upstream failed; the `kind` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ConnectErrorKind {
    /// The upstream's host name did not resolve (or to no address).
    Resolve,
    /// Every address refused the connection (nothing listens there).
    Refused,
    /// `timeouts.connect` ran out (resolving included).
    Timeout,
    /// Any other failure (unreachable network, ...).
    Other,
}

impl ConnectErrorKind {
    pub const ALL: [ConnectErrorKind; 4] = [
        ConnectErrorKind::Resolve,
        ConnectErrorKind::Refused,
        ConnectErrorKind::Timeout,
        ConnectErrorKind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectErrorKind::Resolve => "resolve",
            ConnectErrorKind::Refused => "refused",
            ConnectErrorKind::Timeout => "timeout",
            ConnectErrorKind::Other => "other",
        }
    }
}

/// Which way bytes went; the `direction` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    ToUpstream,
    ToClient,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToUpstream => "to_upstream",
            Direction::ToClient => "to_client",
        }
    }
}

macro_rules! label_value {
    ($($ty:ty),+) => {$(
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    )+};
}

label_value!(Outcome, ConnectErrorKind, Direction);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub listener: String,
    pub upstream: String,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub listener: String,
    pub direction: Direction,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub listener: String,
    pub upstream: String,
    pub kind: ConnectErrorKind,
}

// === impl TcpMetrics ===

/// The `sluice_tcp_*` families.
#[derive(Clone, Default)]
pub struct TcpMetrics {
    connections: Family<ConnectionLabels, Counter>,
    active: Family<ListenerLabels, Gauge>,
    bytes: Family<BytesLabels, Counter>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
}

impl TcpMetrics {
    /// Registers the families in `registry` (the `tcp` sub-registry of the
    /// proxy's `sluice` registry).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "connections",
            "Client connections of plain TCP listeners, counted when they end, by outcome",
            metrics.connections.clone(),
        );
        registry.register(
            "active_connections",
            "Client connections of plain TCP listeners open now",
            metrics.active.clone(),
        );
        registry.register(
            "bytes",
            "Bytes forwarded by plain TCP listeners, to the upstream and to the client",
            metrics.bytes.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed connects of plain TCP listeners to their upstream, by kind",
            metrics.upstream_errors.clone(),
        );
        metrics
    }

    /// The handles of one listener forwarding to `upstream` (made at once,
    /// so every series is shown at 0).
    pub fn listener(&self, listener: &str, upstream: &str) -> ListenerMetrics {
        let outcomes = Outcome::ALL.map(|outcome| {
            self.connections
                .get_or_create(&ConnectionLabels {
                    listener: listener.to_string(),
                    upstream: upstream.to_string(),
                    outcome,
                })
                .clone()
        });
        let connect_errors = ConnectErrorKind::ALL.map(|kind| {
            self.upstream_errors
                .get_or_create(&UpstreamErrorLabels {
                    listener: listener.to_string(),
                    upstream: upstream.to_string(),
                    kind,
                })
                .clone()
        });
        let bytes = |direction| {
            self.bytes
                .get_or_create(&BytesLabels {
                    listener: listener.to_string(),
                    direction,
                })
                .clone()
        };
        ListenerMetrics {
            outcomes,
            connect_errors,
            active: self
                .active
                .get_or_create(&ListenerLabels {
                    listener: listener.to_string(),
                })
                .clone(),
            to_upstream: bytes(Direction::ToUpstream),
            to_client: bytes(Direction::ToClient),
        }
    }
}

/// One TCP listener's metric handles.
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    outcomes: [Counter; 6],
    connect_errors: [Counter; 4],
    pub active: Gauge,
    pub to_upstream: Counter,
    pub to_client: Counter,
}

impl ListenerMetrics {
    pub fn record_outcome(&self, outcome: Outcome) {
        let i = Outcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .expect("every outcome is in ALL");
        self.outcomes[i].inc();
    }

    pub fn record_connect_error(&self, kind: ConnectErrorKind) {
        let i = ConnectErrorKind::ALL
            .iter()
            .position(|k| *k == kind)
            .expect("every kind is in ALL");
        self.connect_errors[i].inc();
    }
}
