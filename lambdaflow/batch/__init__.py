"""The batch layer: the archiver and its raw store, the daily dbt build, publishing, late data."""
