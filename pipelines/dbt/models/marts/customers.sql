with

customers as (

    select * from {{ ref('stg_jaffle_shop__customers') }}

),

orders as (

    select * from {{ ref('orders') }}

),

customer_orders_summary as (

    select
        customer_id,
        count(distinct order_id) as count_lifetime_orders,
        min(ordered_at) as first_ordered_at,
        max(ordered_at) as last_ordered_at,
        sum(subtotal) as lifetime_spend_pretax,
        sum(tax_paid) as lifetime_tax_paid,
        sum(order_total) as lifetime_spend,
        sum(subtotal - order_cost) as lifetime_gross_margin

    from orders

    group by 1

),

joined as (

    select
        customers.customer_id,
        customers.customer_name,
        coalesce(summary.count_lifetime_orders, 0) as count_lifetime_orders,
        summary.first_ordered_at,
        summary.last_ordered_at,
        coalesce(summary.lifetime_spend_pretax, 0) as lifetime_spend_pretax,
        coalesce(summary.lifetime_tax_paid, 0) as lifetime_tax_paid,
        coalesce(summary.lifetime_spend, 0) as lifetime_spend,
        -- lifetime value: what the shop keeps from the customer's orders, i.e. spend before tax
        -- (the tax belongs to the state); gross margin subtracts the supplies as well
        coalesce(summary.lifetime_spend_pretax, 0) as lifetime_value,
        coalesce(summary.lifetime_gross_margin, 0) as lifetime_gross_margin,
        case
            when coalesce(summary.count_lifetime_orders, 0) = 0 then null
            else round(summary.lifetime_spend_pretax / summary.count_lifetime_orders, 2)
        end as average_order_value,
        case
            when coalesce(summary.count_lifetime_orders, 0) = 0 then 'prospect'
            when summary.count_lifetime_orders = 1 then 'new'
            else 'returning'
        end as customer_type

    from customers

    left join customer_orders_summary as summary
        on customers.customer_id = summary.customer_id

)

select * from joined
