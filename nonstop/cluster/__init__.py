"""nonstop.cluster: origin clusters and edges (SRS's `cluster {}`): edge pull and push over the client
RtmpSession, coworker queries, RTMP 302 redirects and the `/api/v1/clusters` answer. `manager.Cluster` is the
worker's one entry point."""
