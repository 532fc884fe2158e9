"""Orders in: the marketplaces' order webhooks verified and parsed (webhooks), applied exactly once per line
(intake, over typed records), the orders that could not be covered (rejections); shared by the HTTP
endpoint and the order pollers."""
