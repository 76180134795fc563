"""The seed's own backups (`unified_backup_<yyyymmdd_hhmmss>.json.gz`), read and imported as snapshots."""
