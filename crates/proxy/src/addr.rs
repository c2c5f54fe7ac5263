//! Newtypes for the addresses a connection carries, so one kind can never be passed where another
//! is expected (linkerd's `OrigDstAddr`, `Remote<ClientAddr>`).

use std::fmt;
use std::net::SocketAddr;

macro_rules! addr_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub SocketAddr);

        impl $name {
            /// The socket address.
            pub fn get(self) -> SocketAddr {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

addr_newtype! {
    /// Where the downstream client meant to connect before capture (`SO_ORIGINAL_DST`): a service
    /// VIP:port outbound, the pod's IP:port inbound. Envoy's `downstream_local_address`.
    OrigDstAddr
}

addr_newtype! {
    /// The downstream peer (`downstream_remote_address`).
    ClientAddr
}

addr_newtype! {
    /// The address of the listener that accepted a connection.
    ListenAddr
}

addr_newtype! {
    /// An upstream endpoint we connect to (`upstream_host`).
    EndpointAddr
}
