CREATE TABLE probe (id bigint PRIMARY KEY);
