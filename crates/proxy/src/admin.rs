//! Admin server on 127.0.0.1:15000.
