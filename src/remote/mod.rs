pub(crate) mod connect;
