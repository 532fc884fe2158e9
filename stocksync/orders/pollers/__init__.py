"""Orders read back from the marketplaces' order APIs: what a lost webhook did not deliver.

Webhooks are not guaranteed (Shopify's own guidance: run reconciliation jobs that fetch orders from the
API), so each Shopify, Amazon and Flipkart channel with `poll_s` set also reads its orders changed since a
cursor and applies them through the same intake as the webhooks, under the same references: an order the
webhook applied is found applied, one it lost is taken now and counted (found_by_polling).

    poller.py    OrderPoller: passes (cursor, pages, apply), and the loop a worker process runs
    service.py   OrderPollers: the pollers of one worker process (started by consumers/runner.py)
    reader.py    what a marketplace's reader gives: pages of orders, each as its webhooks' deliveries
    shopify.py, amazon.py, flipkart.py    the readers
    client.py, pacing.py                  HTTP calls (timeouts, retries, 429) and client-side rate limits
    cursor.py, lease.py, stats.py         what is kept in Redis: cursors, the lease, the counters
    options.py, report.py                 the channel's poller settings; what a pass did

`stocksync reconcile orders CHANNEL [--since ISO-TIME]` (stocksync/orders/reconcile.py) runs one pass.
"""
