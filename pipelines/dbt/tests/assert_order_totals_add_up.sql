-- An order's total is its subtotal plus its tax, and its subtotal is the sum of its items' prices.
-- Rows returned are orders that break either rule (the test fails when there are any).
select
    order_id,
    subtotal,
    tax_paid,
    order_total,
    order_items_subtotal
from {{ ref('orders') }}
where order_total <> subtotal + tax_paid
   or order_items_subtotal <> subtotal
