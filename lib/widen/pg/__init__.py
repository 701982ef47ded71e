"""PostgreSQL, shared by the narrow source, the wide target and the catalog: sessions and statements
(``db``), JDBC URLs, the rendering rules and checksums as SQL, and what each server version can do."""
