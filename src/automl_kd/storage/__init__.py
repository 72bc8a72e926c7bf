"""Storage: URLs and studies (``studies``), what counts as an outage (``outage``), heartbeats, worker processes."""
