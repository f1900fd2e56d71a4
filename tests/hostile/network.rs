//! What a Dockerfile alone may not do to the network: RUN --network=host and
//! RUN --security=insecure need the user's entitlement.
