-- Per-transaction session settings the row-level security policies read.

-- name: set_org
-- Act for one organization until the end of this transaction (tolstoy_current_org()).
select set_config('app.org_id', :org_id, true);
