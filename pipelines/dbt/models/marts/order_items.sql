with

order_items as (

    select * from {{ ref('stg_jaffle_shop__order_items') }}

),

orders as (

    select * from {{ ref('stg_jaffle_shop__orders') }}

),

products as (

    -- the products mart: price, and what one unit costs to make (summed from its supplies there)
    select * from {{ ref('products') }}

),

joined as (

    select
        order_items.order_item_id,
        order_items.order_id,
        order_items.product_id,
        orders.customer_id,
        orders.location_id,
        orders.ordered_at,
        products.product_name,
        products.product_price,
        products.is_food_item,
        products.is_drink_item,
        coalesce(products.supply_cost, 0) as supply_cost

    from order_items

    left join orders on order_items.order_id = orders.order_id

    left join products on order_items.product_id = products.product_id

)

select * from joined
