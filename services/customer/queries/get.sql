select c.id, c.code, c.display_name, c.email, c.phone, c.contact_name, c.tax_id, c.address,
       c.owner_id, c.archived, c.revision, c.create_time, c.update_time,
       c.created_by, cb.display_name as created_by_name,
       c.updated_by, ub.display_name as updated_by_name,
       lower(c.display_name) as "name_key!"
from customers c
join salespeople cb on cb.id = c.created_by
join salespeople ub on ub.id = c.updated_by
where c.id = $1
