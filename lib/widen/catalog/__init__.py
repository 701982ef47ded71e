"""The catalog and ledgers in the target database: schema (versioned), layouts, ships, ledgers, job locks."""
